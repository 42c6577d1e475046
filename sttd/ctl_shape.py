"""``sttctl shape``: the daemon's shaping step run here, on the command line's words, without a daemon.

It reads the config (and a profile) as sttd would, feeds each argument to a
dictation core as one utterance, and prints what would be typed, sent or
purged, each text JSON-quoted so spaces and line breaks show.
"""

from __future__ import annotations

import argparse
import json
import sys

from .ctl_client import EXIT_OK, EXIT_REFUSED


def shape(args: argparse.Namespace) -> int:
    """``sttctl shape``: the daemon's shaping step, run here on the arguments, one utterance each."""
    from pathlib import Path

    from . import config, core, shaping
    from . import protocol as p
    from .errors import ConfigError, InvalidLanguageError
    from .languages import check_language

    try:
        cfg = config.load(Path(args.config) if args.config else None)
        profile = cfg.profile(args.profile or "")
        language = args.lang if args.lang is not None else profile.language
        if language is None:
            language = profile.config.realtime.language
        check_language(language)
        shaper = shaping.shaper_for(profile.config, language)
    except (ConfigError, InvalidLanguageError) as exc:
        print(f"sttctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    dictation = core.Dictation(enabled=True, language=language, shaper=shaper)
    for number, text in enumerate(args.text, 1):
        dictation.server_event(p.TranscriptionCompleted(f"shape-{number}", text))
    # One line per event, the text JSON-quoted: spaces and line breaks show.
    for output in dictation.take_outputs():
        match output:
            case core.TextCommitted(text, _, separator):
                print(f"text:    {_quoted(text)}" + (f" (after {_quoted(separator)})" if separator != " " else ""))
            case core.Triggered(name, text):
                print(f"{name + ':':8} {_quoted(text)}")
    if dictation.pending_text:
        print(f"pending: {_quoted(dictation.pending_text)}")
    return EXIT_OK


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
