"""``sttctl model download [MODEL]`` and ``sttctl model list``: the offline engine's models, without the daemon.

Both work on this user's model cache directly (no D-Bus): ``download`` is
``sttd-engine download`` (progress, verification, where it went; see
:mod:`sttd.engine.download`), ``list`` shows the models faster-whisper knows,
which are on this machine and where, and marks ``[local] model`` from the
configuration. The engine's modules are imported only here, so ``sttctl``
itself runs without the ``local`` extra.
"""

from __future__ import annotations

import argparse
import sys

from . import config

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("download", "list"),
        help="download: fetch a model with progress, verify it, print where it went; "
        "list: the models the offline engine knows, and which are downloaded",
    )
    parser.add_argument("model", nargs="?", help="for download: a model name (default: [local] model)")


def configured_model() -> str:
    """``[local] model`` from the configuration (the default one when it cannot be read)."""
    try:
        return config.load().local.model
    except Exception:  # a broken config file: sttd itself reports it; here the default will do
        return config.LocalConfig().model


def run(args: argparse.Namespace) -> int:
    try:
        from .engine import download
    except ImportError as exc:  # pragma: no cover - the engine's modules ship with sttd
        print(f"sttctl: the offline engine is not available: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.action == "download":
            return download.main([args.model or configured_model()])
        if args.model:
            print("sttctl: model list takes no model name", file=sys.stderr)
            return EXIT_USAGE
        return _list()
    except ImportError:
        print("sttctl: the offline engine is not installed: pip install 'sttd[local]'", file=sys.stderr)
        return EXIT_FAILED


def _list() -> int:
    from .engine.download import cached_path, known_models

    wanted = configured_model()
    names = known_models()
    if wanted not in names:
        names.append(wanted)
    for name in names:
        path = cached_path(name)
        mark = "*" if name == wanted else " "
        print(f"{mark} {name:<20} {path if path else 'not downloaded'}")
    return 0
