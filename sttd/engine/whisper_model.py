"""Which Whisper model the engine runs, and where: ``[local]`` settings, device choice, cores.

What the :class:`~sttd.engine.transcriber.Transcriber` loads its model with,
decided before anything is loaded: the settings, the device and compute type
for the CUDA devices found, the cores to use, and the languages Whisper
knows. No model is loaded here, and numpy is not needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSettings:
    """``[local]``: which model, where it runs."""

    model: str = "base.en"
    """A faster-whisper model name (fetched by its loader on first use) or a directory."""
    device: str = "cpu"
    compute_type: str = "int8"
    threads: int = 0
    """0: every core this process may run on."""

    @property
    def name(self) -> str:
        """What ``session.updated`` reports as the transcription model."""
        path = os.path.expanduser(self.model)
        return os.path.basename(os.path.normpath(path)) if os.path.isdir(path) else self.model


def choose_device(device: str, compute_type: str, cuda_devices: int) -> tuple[str, str]:
    """``(device, compute_type)`` to load the model with, for ``[local] device`` and the CUDA devices found.

    ``auto`` takes CUDA when CTranslate2 finds a device, else the CPU. On
    CUDA the CPU's default ``int8`` becomes ``int8_float16`` (int8 weights,
    float16 arithmetic: what GPUs are fast at); any other compute type is
    kept as configured. ``cuda`` without a device is refused with a reason
    rather than left to CTranslate2's error. No I/O: the count is passed in.
    """
    if device == "auto":
        device = "cuda" if cuda_devices > 0 else "cpu"
    if device == "cuda":
        if cuda_devices <= 0:
            raise ModelUnavailableError(
                'cannot use [local] device = "cuda": CTranslate2 finds no CUDA device '
                '(use "auto" to fall back to the CPU)'
            )
        if compute_type == "int8":
            compute_type = "int8_float16"
    return device, compute_type


def cuda_device_count() -> int:
    """CUDA devices CTranslate2 can use (0 when it was built without CUDA or finds no driver)."""
    try:
        import ctranslate2  # type: ignore[import-untyped, import-not-found, unused-ignore]

        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # no CUDA runtime: the CPU it is
        return 0


class ModelUnavailableError(Exception):
    """The model could not be loaded; every turn fails with this message."""


def supported_languages() -> frozenset[str]:
    """Language codes Whisper knows (without loading a model)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return frozenset(_LANGUAGE_CODES)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
