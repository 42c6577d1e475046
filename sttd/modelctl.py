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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="model_action", required=True, metavar="ACTION")
    download = actions.add_parser("download", help="fetch a model with progress, verify it, print where it went")
    download.add_argument("model", nargs="?", help="a model name (default: [local] model from the configuration)")
    actions.add_parser("list", help="the models the offline engine knows, and which are downloaded")


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
        if args.model_action == "download":
            return download.main([args.model or configured_model()])
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
