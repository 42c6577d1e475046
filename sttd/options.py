"""Per-dictation options (``StartWith``): checked, and resolved against the config. No I/O.

``StartWith(a{sv} options)`` takes ``profile`` (s), ``language`` (s),
``prompt`` (s), ``keywords`` (as) and ``output`` (s). A profile
(``[profiles.NAME]``) is applied first, then the other options over it; the
result holds for that dictation only: the next plain ``Start`` uses the
defaults again. Anything that cannot be used raises
:class:`~sttd.errors.InvalidOptionError` naming the option.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from . import models
from .config import Config, OutputConfig
from .core import DictationOptions
from .errors import ConfigError, InvalidLanguageError, InvalidOptionError
from .languages import check_language
from .redact import excerpt

TYPES = {"profile": "s", "language": "s", "prompt": "s", "keywords": "as", "output": "s"}
"""Every option and its D-Bus signature."""
_TYPE_NAMES = {"s": "a string", "as": "an array of strings"}
MAX_PROMPT_CHARS = 4096
MAX_STRING_CHARS = 4096


def output_modes() -> tuple[str, ...]:
    """The ``[output] mode`` choices, as the config declares them."""
    return typing.get_args(typing.get_type_hints(OutputConfig)["mode"])


def check_types(options: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    """``{name: (signature, value)}`` as they came over D-Bus -> ``{name: value}``; unknown names and types refused."""
    values = {}
    for name, (signature, value) in options.items():
        shown = excerpt(name, 40)
        if name not in TYPES:
            raise InvalidOptionError(f"unknown option {shown} (StartWith takes {', '.join(TYPES)})")
        if signature != TYPES[name]:
            expected = TYPES[name]
            raise InvalidOptionError(f"option {name} must be {_TYPE_NAMES[expected]} ('{expected}'), not '{signature}'")
        longest = max((len(v) for v in (value if isinstance(value, list) else [value])), default=0)
        if longest > MAX_STRING_CHARS:
            raise InvalidOptionError(f"option {name}: a string of {longest} characters (at most {MAX_STRING_CHARS})")
        values[name] = value
    return values


@dataclasses.dataclass(frozen=True)
class Resolved:
    options: DictationOptions
    config: Config
    """The config as this dictation uses it (the profile's, with the options applied)."""


def resolve(values: Mapping[str, Any], base: Config) -> Resolved:
    """Apply ``values`` (checked by :func:`check_types`) to ``base``. Raises :class:`InvalidOptionError`."""
    name = values.get("profile", "")
    try:
        profile = base.profile(name)
    except ConfigError as exc:
        raise InvalidOptionError(f"option profile: {exc}") from None
    cfg, language = profile.config, profile.language
    if "language" in values:
        language = values["language"]
        try:
            check_language(language)
        except InvalidLanguageError as exc:
            raise InvalidOptionError(f"option language: {exc}") from None
    realtime = cfg.realtime
    if "prompt" in values:
        prompt = values["prompt"]
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidOptionError(f"option prompt: at most {MAX_PROMPT_CHARS} characters, not {len(prompt)}")
        realtime = dataclasses.replace(realtime, prompt=prompt)
    if "keywords" in values:
        keywords = tuple(values["keywords"])
        if len(keywords) > models.MAX_KEYWORDS:
            raise InvalidOptionError(f"option keywords: at most {models.MAX_KEYWORDS} keywords, not {len(keywords)}")
        for keyword in keywords:
            why = models.keyword_problem(keyword)
            if why is not None:
                raise InvalidOptionError(f"option keywords: {excerpt(keyword)} {why}")
        realtime = dataclasses.replace(realtime, keywords=keywords)
    output = cfg.output
    if "output" in values:
        modes = output_modes()
        if values["output"] not in modes:
            choices = ", ".join(repr(m) for m in modes)
            raise InvalidOptionError(f"option output: must be one of {choices}, not {excerpt(values['output'])}")
        output = dataclasses.replace(output, mode=values["output"])
    cfg = dataclasses.replace(cfg, realtime=realtime, output=output)
    mode = output.mode if output.mode != base.output.mode else None
    return Resolved(DictationOptions(profile=name, language=language, output=mode), cfg)
