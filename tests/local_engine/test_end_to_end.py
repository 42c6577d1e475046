"""sttd itself dictates through the offline engine from a PulseAudio microphone."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bus import SessionBus, wait_until
from ..daemon import Listener, Sttd
from ..sound import SoundServer, speech_wav, wav_samples
from ..wer import wer, words
from .harness import RATE, SENTENCES, voiced_ms

# ------------------------------------------------------------- end to end


def nth_final(n: int) -> Callable[[dict[str, Any]], bool]:
    """A Listener predicate true at the (n+1)-th final Transcript (Listener rescans what it saw first)."""
    count = 0

    def predicate(event: dict[str, Any]) -> bool:
        nonlocal count
        if event["type"] == "transcript" and event["final"]:
            count += 1
        return count > n

    return predicate


def test_sttd_with_the_local_engine_dictates_from_the_microphone(
    tmp_path: Path, model_dir: Path, session_bus: SessionBus, pulse_server: SoundServer
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[realtime]\nengine = "local"\n\n[local]\nmodel = "{model_dir}"\n', encoding="utf-8")
    env = {**session_bus.env(), "PULSE_SERVER": pulse_server.server, "OPENAI_API_KEY": ""}
    wavs = [speech_wav(text, tmp_path / f"sentence{i}.wav") for i, text in enumerate(SENTENCES)]
    daemon = Sttd(tmp_path, env, config)
    listener = None
    latencies, rates = [], []
    early: list[bool] = []  # per sentence: a partial Transcript arrived before the voice ended
    try:
        daemon.wait_ready(30)
        wait_until(
            lambda: "transcription engine: local" in daemon.log,
            10,
            'sttd to log "transcription engine: local" (is the daemon wiring of issue 9 in place?)',
        )
        listener = Listener(daemon)
        assert daemon.ctl("start").returncode == 0
        daemon.wait_state("listening", 60)
        for index, (text, wav) in enumerate(zip(SENTENCES, wavs, strict=True)):
            pulse_server.play(wav)
            played = time.monotonic()
            event = listener.wait_for(nth_final(index), 30, f"the final Transcript of sentence {index + 1}")
            # From the end of the voice: the wav ends with espeak-ng's trailing silence.
            samples = wav_samples(wav)
            trailing_s = (len(samples) / RATE * 1000 - voiced_ms(samples)[1]) / 1000
            latencies.append(round(float(time.monotonic() - played + trailing_s), 2))
            got = event["text"]
            rates.append(wer(text, got))
            assert words(got) == words(text)
            # gpt-live-transcribe (the default model): the engine sends words while the person speaks.
            partials = [
                (at, e["text"])
                for at, e in list(listener.arrived)
                if e["type"] == "transcript" and not e["final"] and e["item_id"] == event["item_id"]
            ]
            texts = [t for _, t in partials]
            assert all(b.startswith(a) for a, b in itertools.pairwise(texts)), texts  # only grows
            early.append(bool(partials) and partials[0][0] < played - trailing_s)
        assert daemon.ctl("stop").returncode == 0
        daemon.wait_state("idle")
        assert daemon.terminate() == 0
    finally:
        if listener is not None:
            listener.close()
        daemon.kill()
    print(f"\nlocal engine end to end: latency (end of speech -> final Transcript) {latencies} s, WER {rates}")
    # The longest sentences last 2.5-3 s; the first words come about a second after the onset.
    assert any(early), "no partial Transcript arrived before the speaker stopped"
    assert "Traceback" not in daemon.log
    for line in daemon.log.splitlines():  # transcripts never above DEBUG, the engine's lines included
        if any(text in line.lower() for text in SENTENCES):
            assert " DEBUG " in line, line
