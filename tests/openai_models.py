"""Strict checks of Realtime events against the official ``openai`` package.

The SDK's pydantic models accept keys they do not declare (``extra="allow"``)
and its unions are not pydantic-discriminated, so validating with them alone
would let a misspelt or invented field through. Here every event is

1. routed on its ``type`` to the one SDK model that declares that type,
2. validated against that model in strict JSON mode (what goes on the wire),
3. walked, model by model, for keys the model does not declare
   (``model_extra`` non-empty anywhere is a failure).

Union errors are pruned to the member the payload was meant for (members
whose ``type`` literal does not match are dropped), so a wrong ``rate`` reads
``session.audio.input.format.rate: Input should be 24000`` rather than
twenty lines about ``conversation.item.create``.

One documented exception, for server events only: in ``session.created`` and
``session.updated`` the SDK declares ``session`` as the *request* shape,
which lacks the ``id``, ``object`` and ``expires_at`` the service sends. There
the session object must validate strictly against
``RealtimeTranscriptionSessionCreateResponse`` (the SDK's model of the
transcription session the service returns, which declares them) **and**, with
those three keys removed, against the event's own model.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import pydantic
from openai.types.realtime import (
    ClientSecretCreateResponse,
    RealtimeClientEvent,
    RealtimeServerEvent,
    RealtimeTranscriptionSessionCreateRequest,
    RealtimeTranscriptionSessionCreateResponse,
)
from pydantic import TypeAdapter, ValidationError

__all__ = [
    "Problem",
    "client_event_problems",
    "client_secret_response_problems",
    "server_event_problems",
    "transcription_session_request_problems",
    "validate_client_event",
    "validate_client_secret_response",
    "validate_server_event",
]

_SESSION_RESPONSE_ONLY_KEYS = ("id", "object", "expires_at")
"""Keys of a transcription session object that the service sends in
``session.created``/``session.updated`` but the SDK's event models omit."""


@dataclass(frozen=True)
class Problem:
    """One reason an event does not match the SDK's models.

    ``code`` follows the service's error codes where one fits:
    ``unknown_parameter`` (a key the model does not declare),
    ``missing_required_parameter``, ``invalid_value``, ``invalid_type``,
    ``unknown_event`` (a ``type`` no model declares). ``param`` is the dotted
    path of the offending key (``session.audio.input.format.rate``).
    """

    code: str
    param: str
    message: str

    def __str__(self) -> str:
        return f"{self.param or '<event>'}: {self.message} [{self.code}]"


# --------------------------------------------------------------- model lookup


def _union_members(alias: Any) -> tuple[type[pydantic.BaseModel], ...]:
    """The model classes of an ``Annotated[Union[...], PropertyInfo(...)]`` alias."""
    if typing.get_origin(alias) is typing.Annotated:
        alias = typing.get_args(alias)[0]
    return tuple(m for m in typing.get_args(alias) if isinstance(m, type) and issubclass(m, pydantic.BaseModel))


def _models_by_type(alias: Any) -> dict[str, type[pydantic.BaseModel]]:
    models: dict[str, type[pydantic.BaseModel]] = {}
    for model in _union_members(alias):
        field = model.model_fields["type"]
        for literal in typing.get_args(field.annotation):
            models[literal] = model
    return models


_CLIENT_MODELS = _models_by_type(RealtimeClientEvent)
_SERVER_MODELS = _models_by_type(RealtimeServerEvent)

CLIENT_EVENT_TYPES: frozenset[str] = frozenset(_CLIENT_MODELS)
"""Every client event ``type`` the SDK declares."""
SERVER_EVENT_TYPES: frozenset[str] = frozenset(_SERVER_MODELS)
"""Every server event ``type`` the SDK declares."""


@cache
def _adapter(model: type[pydantic.BaseModel]) -> TypeAdapter[Any]:
    return TypeAdapter(model)


# ----------------------------------------------------------------- validation


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _display_loc(loc: Iterable[Any]) -> str:
    # Union members appear in pydantic's locations as class names (and
    # tagged-union tags as "function-..."): they are not keys on the wire.
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            continue
        text = str(part)
        if text[:1].isupper() or text.startswith("function-"):
            continue
        parts.append(("." if parts else "") + text)
    return "".join(parts)


_CODES = {
    "missing": "missing_required_parameter",
    "literal_error": "invalid_value",
    "enum": "invalid_value",
    "value_error": "invalid_value",
}


def _is_member_tag(part: Any) -> bool:
    return isinstance(part, str) and part[:1].isupper()


def _prune_union_errors(errors: list[Any]) -> list[Any]:
    """Drop the errors of union members the payload was not meant for.

    A member whose discriminating ``type`` literal did not match is "wrong";
    its errors are dropped when another member of the same union failed for
    other reasons (that one is the member meant). When every member is wrong,
    the ``type`` value itself is the problem and all are kept.
    """
    wrong: set[tuple[Any, ...]] = set()
    members: dict[tuple[Any, ...], set[Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        for i, part in enumerate(loc):
            if _is_member_tag(part):
                members.setdefault(loc[:i], set()).add(part)
        if err["type"] == "literal_error" and len(loc) >= 2 and loc[-1] == "type" and _is_member_tag(loc[-2]):
            wrong.add(loc[:-1])
    droppable = {
        prefix for prefix in wrong if members.get(prefix[:-1], set()) - {p[-1] for p in wrong if p[:-1] == prefix[:-1]}
    }
    return [err for err in errors if not any(tuple(err["loc"][: len(p)]) == p for p in droppable)]


def _errors_to_problems(exc: ValidationError, prefix: str = "") -> list[Problem]:
    merged: dict[tuple[str, str], tuple[list[str], Any]] = {}
    for err in _prune_union_errors(exc.errors(include_url=False)):
        param = _display_loc(err["loc"])
        if prefix:
            param = f"{prefix}.{param}" if param else prefix
        code = _CODES.get(err["type"], "invalid_type")
        msg = f"Missing required parameter: '{param}'." if err["type"] == "missing" else err["msg"]
        messages, _ = merged.setdefault((code, param), ([], err.get("input")))
        if msg not in messages:
            messages.append(msg)
    problems = []
    for (code, param), (messages, value) in merged.items():
        message = " or ".join(messages)
        if code != "missing_required_parameter":
            message += f" (got {_short(value)})"
        problems.append(Problem(code, param, message))
    return problems


def _undeclared(value: Any, path: str) -> list[Problem]:
    """Keys the parsed models did not declare, at any depth."""
    problems: list[Problem] = []
    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            param = f"{path}.{key}" if path else key
            problems.append(Problem("unknown_parameter", param, f"Unknown parameter: '{param}'."))
        for name, field in type(value).model_fields.items():
            wire = field.alias or name
            problems += _undeclared(getattr(value, name, None), f"{path}.{wire}" if path else wire)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problems += _undeclared(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        # A dict-typed field (metadata, JSON schema, ...) declares any key;
        # only models inside it have declared keys to check.
        for key, item in value.items():
            problems += _undeclared(item, f"{path}.{key}")
    return problems


def _against(model: type[pydantic.BaseModel], data: Any, prefix: str = "") -> list[Problem]:
    try:
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:
        return [Problem("invalid_type", prefix, f"not JSON-serialisable: {exc}")]
    try:
        parsed = _adapter(model).validate_json(text, strict=True)
    except ValidationError as exc:
        return _errors_to_problems(exc, prefix)
    return _undeclared(parsed, prefix)


def _event_problems(event: Any, models: Mapping[str, type[pydantic.BaseModel]]) -> list[Problem]:
    if not isinstance(event, Mapping):
        return [Problem("invalid_type", "", f"an event must be a JSON object, not {type(event).__name__}")]
    kind = event.get("type")
    if not isinstance(kind, str):
        return [Problem("missing_required_parameter", "type", "Missing required parameter: 'type'.")]
    model = models.get(kind)
    if model is None:
        return [Problem("unknown_event", "type", f"Invalid value: '{kind}' is not a declared event type.")]
    return _against(model, dict(event))


def client_event_problems(event: Any) -> list[Problem]:
    """Every way ``event`` (a decoded client event) departs from the SDK's models."""
    return _event_problems(event, _CLIENT_MODELS)


def server_event_problems(event: Any) -> list[Problem]:
    """Every way ``event`` (a server event as sent) departs from the SDK's models.

    See the module docstring for the one exception (``session.created`` and
    ``session.updated`` carry the service's full session object).
    """
    if (
        isinstance(event, Mapping)
        and event.get("type") in ("session.created", "session.updated")
        and isinstance(event.get("session"), Mapping)
    ):
        session = dict(event["session"])
        problems = _against(RealtimeTranscriptionSessionCreateResponse, session, "session")
        stripped = {k: v for k, v in session.items() if k not in _SESSION_RESPONSE_ONLY_KEYS}
        seen = {(p.code, p.param) for p in problems}
        for problem in _event_problems({**event, "session": stripped}, _SERVER_MODELS):
            if (problem.code, problem.param) not in seen:
                problems.append(problem)
        return problems
    return _event_problems(event, _SERVER_MODELS)


def client_secret_response_problems(body: Any) -> list[Problem]:
    """Problems of a ``POST /v1/realtime/client_secrets`` reply body."""
    return _against(ClientSecretCreateResponse, body)


def transcription_session_request_problems(session: Any, prefix: str = "session") -> list[Problem]:
    """Problems of a transcription session configuration as a client sends it."""
    return _against(RealtimeTranscriptionSessionCreateRequest, session, prefix)


def _raise(kind: str, event: Any, problems: list[Problem]) -> None:
    if problems:
        kind_name = event.get("type") if isinstance(event, Mapping) else None
        lines = "\n  ".join(str(p) for p in problems)
        raise AssertionError(f"{kind} {kind_name!r} does not match the openai models:\n  {lines}")


def validate_client_event(event: Mapping[str, Any]) -> None:
    """Raise AssertionError unless ``event`` is a client event the SDK declares, with no undeclared key."""
    _raise("client event", event, client_event_problems(event))


def validate_server_event(event: Mapping[str, Any]) -> None:
    """Raise AssertionError unless ``event`` is a server event the SDK declares, with no undeclared key."""
    _raise("server event", event, server_event_problems(event))


def validate_client_secret_response(body: Mapping[str, Any]) -> None:
    """Raise AssertionError unless ``body`` is a ``ClientSecretCreateResponse`` with no undeclared key."""
    _raise("client secret response", body, client_secret_response_problems(body))
