"""What the daemon loads at start-up: modules only some configurations need stay out of it.

On a 2-core desktop the daemon's resident memory is the user's (the goal is
a peak under 50 MB); sttd's own voice detection (numpy's resampler, the
Silero binding) and the offline engine's supervisor are imported by the
session or the engine that needs them, never by ``import sttd.daemon``;
nor is numpy (about 11 MB): the capture's level meter works on bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = ("numpy", "sttd.vad", "sttd.vad_segmenter", "sttd.engine.resample", "sttd.engine.supervisor")
"""Imported only by a dictation with client_vad, or by the local engine."""


def _loaded_by(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


def test_daemon_start_up_does_not_load_client_vad_or_engine_modules() -> None:
    loaded = _loaded_by("import sttd.daemon, sttd.cli")
    assert "sttd.daemon" in loaded
    assert sorted(loaded & set(LAZY)) == []


def test_client_vad_modules_still_import_where_they_are_used() -> None:
    # The check above could pass because a module vanished; the lazy imports must still resolve.
    loaded = _loaded_by("import sttd.turns, sttd.realtime, sttd.engines; from sttd.turns import _load_detector")
    assert sorted(loaded & set(LAZY)) == []
    loaded = _loaded_by("from sttd.vad import VoiceDetector; from sttd.engine.supervisor import EngineProcess")
    assert set(LAZY) <= loaded
