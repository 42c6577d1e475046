"""A minute of the soak (``python -m bench.soak --seconds 60``): every disruption once, nothing lost, nothing left over.

The full soak (10 minutes, bench/README.md "Soak") is not run in CI. This
runs the same schedule for 60 s, end to end with real components (a private
bus, PulseAudio, the test Realtime server, the installed sttd, ``sttctl
listen`` and a D-Bus client reading ``Level`` 100 times a second), and
checks what a user would notice: every sentence spoken came back once as a
final transcript, every transcript ran its hook, one websocket at a time,
the ``Level`` reader got an answer every time, sttd never went to ``error``
and stopped cleanly. Growth is bounded generously (a minute is too short
for the soak's own verdict); no timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.soak import DISRUPTIONS

from .bus import require

REPO = Path(__file__).resolve().parent.parent
GENEROUS = {"rss_kb": 20 * 1024, "fds": 10, "threads": 5}
"""Growth after warm-up that fails this test: far above the soak's own verdict bounds."""


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    for binary in ("pulseaudio", "pactl", "paplay", "dbus-daemon", "espeak-ng", "sox", "bash"):
        require(binary)
    out = tmp_path_factory.mktemp("soak")
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--seconds", "60", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=230,
    )
    found = list(out.glob("soak-*.json"))
    assert found, f"the soak wrote no result (exit {done.returncode}):\n{done.stderr[-4000:]}"
    data: dict[str, Any] = json.loads(found[0].read_text())
    return data


@pytest.mark.timeout(240)
def test_every_spoken_sentence_is_transcribed_once_through_every_disruption(soak: dict[str, Any]) -> None:
    assert set(soak["disruptions"]) == set(DISRUPTIONS)
    sentences = soak["sentences"]
    assert sentences["spoken"] >= len(DISRUPTIONS)
    assert sentences["missing"] == []
    assert sentences["duplicates"] == []
    assert sentences["in_order"]
    assert sentences["unexpected_finals"] == []
    assert soak["problems"] == []


@pytest.mark.timeout(240)
def test_every_final_transcript_runs_its_hook_and_the_flood_arrives_whole(soak: dict[str, Any]) -> None:
    assert soak["flood"]["forced"] > 0
    assert soak["flood"]["final_transcripts"] == soak["flood"]["forced"]
    assert soak["hooks"].get("transcript") == soak["final_transcripts"]
    assert soak["hooks"].get("send", 0) >= 1  # every fifth sentence ends with "send"


@pytest.mark.timeout(240)
def test_one_connection_at_a_time_and_no_protocol_violation(soak: dict[str, Any]) -> None:
    assert soak["websocket"]["max_concurrent"] == 1
    assert soak["websocket"]["connections"] > len([d for d in DISRUPTIONS if "drop" in d or d == "rollover"])
    assert soak["websocket"]["violations"] == []


@pytest.mark.timeout(240)
def test_level_is_answered_every_time_and_sttd_stops_cleanly(soak: dict[str, Any]) -> None:
    poller = soak["level_poller"]
    assert poller.get("ok", 0) > 0, poller
    assert poller["errors"] == 0, poller
    assert "error" not in soak["states_seen"]
    assert soak["states_seen"][-1] == "idle"
    # No Error signal at all: the service's "session_expired" before its close is followed by a new
    # session and costs the user nothing, so sttd logs it at INFO rather than signalling it.
    assert soak["error_signals"] == []
    assert soak["sttd_exit_code"] == 0
    assert soak["sttd_log"]["tracebacks"] == 0
    assert not [m for m in soak["sttd_log"]["by_message"] if " ERROR " in f" {m} " or "CRITICAL" in m]


@pytest.mark.timeout(240)
def test_nothing_grows_without_bound(soak: dict[str, Any]) -> None:
    verdict = soak["verdict"]
    for key, bound in GENEROUS.items():
        assert verdict[key] is not None, f"too few samples for {key}"
        assert verdict[key]["growth"] <= bound, (key, verdict[key])
    assert soak["samples"][-1]["children"] == 0  # no hook process left behind
