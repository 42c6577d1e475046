"""``sttd-ibus``: start the IBus engine under a Python that has PyGObject and IBus's introspection data.

sttd's own virtualenv normally has no ``gi`` (PyGObject from PyPI needs a C
build against the system's libraries). The engine imports only the
standard library, ``gi`` and :mod:`sttd.ibus`, so when this interpreter
cannot ``import gi`` the launcher replaces itself with the system's Python
(``STTD_IBUS_PYTHON``, else ``/usr/bin/python3``: Debian's ``python3-gi``
and ``gir1.2-ibus-1.0``), with the directory holding this ``sttd`` package
first on ``PYTHONPATH``. The arguments are passed on.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
ENGINE_MODULE = "sttd.ibus.engine"


def _has_gi() -> bool:
    return importlib.util.find_spec("gi") is not None


def interpreter(environ: dict[str, str] | None = None) -> str | None:
    """The Python to run the engine with; None when this one will do."""
    env = os.environ if environ is None else environ
    chosen = env.get("STTD_IBUS_PYTHON", "")
    if chosen:
        return chosen
    return None if _has_gi() else SYSTEM_PYTHON


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    python = interpreter()
    if python is None:
        from .engine import main as engine_main

        return engine_main(args)
    if not os.access(python, os.X_OK):
        print(
            f"sttd-ibus: {python} is missing: install python3-gi and gir1.2-ibus-1.0 "
            "(or set STTD_IBUS_PYTHON to a Python that has them)",
            file=sys.stderr,
        )
        return 1
    root = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    # -s: not the user's site-packages; sttd.ibus comes from PYTHONPATH, gi from the system.
    os.execve(python, [python, "-s", "-m", ENGINE_MODULE, *args], env)
    return 1  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main())
