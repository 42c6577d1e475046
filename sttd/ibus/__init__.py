"""``sttd-ibus``: an IBus input method that shows sttd's dictation in the focused window.

It is a D-Bus client of the daemon (like ``sttctl``): partial transcripts
appear as preedit and are replaced as they change, final text is committed,
and every key the user types passes through untouched. The engine itself
(:mod:`sttd.ibus.engine`) needs PyGObject and IBus's introspection data
(Debian: ``python3-gi``, ``gir1.2-ibus-1.0``), which the system's Python has
and a virtualenv usually has not: :mod:`sttd.ibus.launch` (the
``sttd-ibus`` command) runs it under an interpreter that has them. What it
shows and commits is decided by :mod:`sttd.ibus.compose` (no I/O).
"""

ENGINE_NAME = "sttd"
"""``ibus engine sttd`` selects it (contract)."""
COMPONENT_NAME = "io.github.sttd.ibus"
"""The component's name on IBus's own bus."""
BUS_NAME = "io.github.sttd.Ibus1"
"""Owned on the session bus while the engine is enabled: the daemon's ``auto`` output looks for it."""
OBJECT_PATH = "/io/github/sttd/Ibus1"
INTERFACE = "io.github.sttd.Ibus1"
