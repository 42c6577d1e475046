"""sttd's offline engine: the Realtime transcription protocol served locally, Whisper behind it.

* :mod:`sttd.engine.server`: the ``sttd-engine`` program (websocket server, sessions, turns);
* :mod:`sttd.engine.supervisor`: :class:`~sttd.engine.supervisor.EngineProcess`, how the daemon runs it;
* :mod:`sttd.engine.vad`: Silero VAD per 32 ms window and the input buffer it cuts into turns;
* :mod:`sttd.engine.resample`: 24 kHz → 16 kHz;
* :mod:`sttd.engine.transcriber`: faster-whisper in a worker thread;
* :mod:`sttd.engine.decoding`: how that thread decodes one turn (short windows, the full path);
* :mod:`sttd.engine.whisper_model`: which model, on which device.

Only the supervisor is imported by the daemon; it needs nothing beyond the
standard library, so the daemon runs without the ``local`` extra installed.
"""
