"""What ``sttd --check-config`` says of a valid config, and the old-style keys the daemon logs at start-up.

Lines of text for a person (the model and its price, the turn detection it
comes to, warnings and notes), from a config already loaded. No I/O.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

from . import models
from .config_checks import is_loopback
from .config_schema import Config, RealtimeConfig, TriggersConfig
from .redact import excerpt


def legacy_notes(config: Config) -> list[str]:
    """What the config still says the old way (``[triggers]``), one line each: logged at INFO, and by --check-config."""
    changed = [
        f"triggers.{f.name}"
        for f in dataclasses.fields(TriggersConfig)
        if getattr(config.triggers, f.name) != f.default
    ]
    if not changed:
        return []
    return [
        f"{', '.join(changed)}: [triggers] still works, but [commands] replaces it "
        '(send = ["send"], purge = ["purge"], position = "end"; phrases, not regular expressions); '
        "the [triggers] patterns are used for send and purge"
    ]


_TURN_MEANING = {
    "server_vad": "the service's voice detection",
    "semantic_vad": "the service's semantic voice detection",
    "client_vad": "sttd's own",
    "manual": "commit on Stop",
}


def check_report(config: Config) -> list[str]:
    """What ``sttd --check-config`` tells about a valid config, one line each.

    The model and its price, what turn detection comes of ``type`` for this
    model, then one ``warning: <key>: <why>`` line for each setting the model
    does not take, a deprecated or unknown model, and clear-text URLs.
    """
    rt, td = config.realtime, config.turn_detection
    info = models.model_info(rt.model)
    price = info.price if info.known else "price unknown"
    lines = [f"model: {excerpt(rt.model) if not info.known else rt.model} ({price}), {_turn_line(config)}"]
    problems = models.setting_problems(
        info,
        turn_detection=td.type,
        languages=rt.languages,
        keywords=rt.keywords,
        prompt=rt.prompt,
        delay=rt.delay,
    )
    lines += [f"warning: {key}: {why}" for key, why in problems]
    if rt.language and rt.languages:
        lines.append(
            f"warning: realtime.languages: realtime.language ({rt.language}) is sent instead of the list "
            "(the service takes only one of them)"
        )
    if info.deprecated:
        lines.append(
            f"warning: realtime.model: {info.name} is deprecated and shut down on {info.shutdown}: "
            f"use {info.replacement} (or {models.DEFAULT_MODEL}, the default)"
        )
    elif not info.known:
        lines.append(
            f"warning: realtime.model: unknown model {excerpt(rt.model)}: sttd sends the most conservative "
            "session (one language, no keywords, sttd's own turn detection)"
        )
    lines += _insecure_lines(rt)
    lines += [f"note: {note}" for note in legacy_notes(config)]
    return lines


def _turn_line(config: Config) -> str:
    info = models.model_info(config.realtime.model)
    mode = config.turn_mode
    meaning = _TURN_MEANING[mode]
    if mode == "client_vad" and info.needs_client_turns:
        meaning += "; the model has none"
    if config.turn_detection.type == "auto":
        meaning = f"auto: {meaning}"
    return f"turn detection: {mode} ({meaning})"


def _insecure_lines(rt: RealtimeConfig) -> list[str]:
    lines = []
    for key, url in (("realtime.url", rt.url), ("realtime.token_url", rt.token_url)):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("ws", "http") and not is_loopback(parts.hostname or ""):
            lines.append(f"warning: {key}: {parts.scheme}:// to another host: the API key travels in clear text")
    return lines
