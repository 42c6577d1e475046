"""The benchmark keeps working: ``python -m bench --smoke`` runs end to end and writes every metric.

Nothing here asserts a timing: the smoke run's durations are far too short
for its numbers to mean anything. It checks that the run succeeds, that the
JSON is well formed and holds a number for every metric the full run
reports (``bench.report.required``), and that the markdown table is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import missing, required

from .bus import require

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / ".cache" / "whisper-base" / "model.bin"


@pytest.mark.timeout(180)
def test_the_smoke_run_writes_every_metric(tmp_path: Path) -> None:
    for binary in ("pulseaudio", "pactl", "paplay", "parec", "dbus-daemon", "espeak-ng", "sox", "bash"):
        require(binary)
    if not MODEL.exists():
        pytest.fail(f"no test model in {MODEL.parent}: run scripts/fetch-test-model (scripts/test does)")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    [result] = tmp_path.glob("*-smoke.json")
    data = json.loads(result.read_text())
    assert data["meta"]["mode"] == "smoke"
    assert set(data["clients"]) == {"sttd", "openai", "legacy"}
    assert len(required(data["meta"]["plan"])) > 80
    assert missing(data) == []
    assert [g["met"] in (True, False) for g in data["goals"]] == [True] * len(data["goals"])
    assert data["meta"]["protocol_violations"] == []

    table = (tmp_path / "smoke.md").read_text()
    assert "| goal | sttd, each run | worst | met |" in table
    assert "openai ÷ sttd" in table
    assert "### What the platform costs" in table  # bench.floor's figures (in required(), so never missing)


@pytest.mark.timeout(120)
def test_the_turns_bench_runs_and_every_sentence_is_one_commit_and_one_final(tmp_path: Path) -> None:
    """``python -m bench.turns`` on two sentences: it completes and reports each figure (values not checked)."""
    for binary in ("espeak-ng", "sox"):
        require(binary)
    out = tmp_path / "turns.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.turns", "--runs", "1", "--sentences", "2", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["complete"]
    (run,) = result["runs"]
    assert run["commits"] == run["finals"] == 2
    assert run["end_of_speech_to_commit_minus_silence_ms"]["n"] == 2
    assert run["onset_to_first_partial_ms"]["n"] == 2
