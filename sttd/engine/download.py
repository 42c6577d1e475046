"""``sttd-engine download [MODEL]``: fetch a faster-whisper model with progress, verify it, say where it went.

The files are those faster-whisper's own loader fetches
(``faster_whisper.utils.download_model``: the same repository, the same
file patterns, the same Hugging Face cache), so the engine then loads the
model offline. The loader honours ``HF_ENDPOINT`` (another hub or a mirror),
``HF_HOME``/``HF_HUB_CACHE`` (where the cache is) and ``HF_HUB_OFFLINE``.

Progress goes to stderr: a bar redrawn in place on a terminal, else one
line per 10 % (``download base.en: 40% (58.1 of 145.3 MB)``), so a log or a
pipe shows progress without carriage returns. Once fetched, the model is
verified by loading it (CTranslate2 reads every tensor), and its directory
is printed on stdout.

:func:`missing_model_message` is the one sentence the daemon, ``sttctl
status`` and the journal show when the model is neither cached nor
fetchable.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from typing import Any, TextIO

DEFAULT_MODEL = "base.en"
ALLOW_PATTERNS = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
"""What faster_whisper.utils.download_model fetches."""
_STEP = 10
"""Percent between two progress lines when stderr is not a terminal."""


class DownloadError(Exception):
    """The model could not be fetched or does not load; the message says why in one line."""


def repo_for(model: str) -> str:
    """The Hugging Face repository of a faster-whisper model name (or ``owner/name`` as it is)."""
    if re.fullmatch(r"[^/\s]+/[^/\s]+", model):
        return model
    from faster_whisper.utils import _MODELS  # type: ignore[import-untyped, import-not-found, unused-ignore]

    repo = _MODELS.get(model)
    if repo is None:
        names = ", ".join(sorted(_MODELS))
        raise DownloadError(
            f"unknown model {model[:60]!r}: use one of {names}, an owner/name repository or a directory"
        )
    return str(repo)


def known_models() -> list[str]:
    """The model names faster-whisper knows, in its own order."""
    from faster_whisper.utils import _MODELS  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return list(_MODELS)


def fix_command(model: str) -> str:
    """The command that fetches ``model``."""
    return f"sttd-engine download {model}" if " " not in model else f"sttd-engine download '{model}'"


def missing_model_message(model: str) -> str:
    """One sentence: what is missing and the exact command that fixes it."""
    return (
        f"the offline model {model} is not downloaded and cannot be fetched now: "
        f"run `{fix_command(model)}` (or `sttctl model download {model}`) once with network access"
    )


def cached_path(model: str) -> str | None:
    """Where ``model`` is on this machine (a directory, or the cached snapshot), or None."""
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return path if os.path.exists(os.path.join(path, "model.bin")) else None
    try:
        repo = repo_for(model)
        import huggingface_hub  # type: ignore[import-untyped, import-not-found, unused-ignore]

        found = huggingface_hub.snapshot_download(repo, allow_patterns=ALLOW_PATTERNS, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), unknown name, no faster-whisper
        return None
    return str(found) if os.path.exists(os.path.join(str(found), "model.bin")) else None


class Progress:
    """Byte counts of the download's progress bars, shown as one bar (a terminal) or percent lines."""

    def __init__(self, model: str, out: TextIO, *, tty: bool) -> None:
        self.model = model
        self.out = out
        self.tty = tty
        self._bars: dict[int, list[float]] = {}
        self._lock = threading.Lock()
        self._shown = -1
        self._total = 0.0

    def bar_class(self) -> type[Any]:
        """A tqdm stand-in for ``snapshot_download(tqdm_class=...)`` that reports here and draws nothing."""
        from tqdm.auto import tqdm  # type: ignore[import-untyped, import-not-found, unused-ignore]

        progress = self

        class Bar(tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.pop("name", None)
                self._counts = kwargs.get("unit") == "B"
                super().__init__(*args, **{**kwargs, "disable": True})
                self.n = kwargs.get("initial", 0) or 0

            def update(self, n: float | None = 1) -> bool | None:
                self.n += n or 0
                if self._counts:
                    progress.report(id(self), self.n, self.total or 0)
                return None

            def refresh(self, *args: Any, **kwargs: Any) -> None:
                if self._counts:
                    progress.report(id(self), self.n, self.total or 0)

        return Bar

    def report(self, bar: int, done: float, total: float, *, finished: bool = False) -> None:
        with self._lock:
            self._bars[bar] = [done, total]
            # The hub's client sums every file into byte bars whose totals grow as files start (and a
            # small file's own bar may be done before model.bin's size is known): the bar with the
            # largest total is the whole download, and 100 % waits for the end of it.
            done, total = max(self._bars.values(), key=lambda v: (v[1], v[0]))
            if total <= 0:
                return
            percent = 100 if finished else min(99, int(100 * done / total))
            if total > self._total and percent < self._shown:
                # A file that started late (a busy machine) made the whole larger than the lines said:
                # they start again from where the larger whole stands, and say so by its size.
                self._shown = -1
            self._total = max(self._total, total)
            if self.tty:
                if percent > self._shown:
                    width = 30
                    filled = width * percent // 100
                    self.out.write(
                        f"\rdownload {self.model}: [{'#' * filled}{'.' * (width - filled)}] {percent:3d}% "
                        f"({done / 1e6:.1f} of {total / 1e6:.1f} MB)"
                    )
                    self.out.flush()
                    self._shown = percent
            elif percent == 100 or percent // _STEP * _STEP > self._shown:
                self._shown = percent if percent == 100 else percent // _STEP * _STEP
                self.out.write(f"download {self.model}: {self._shown}% ({done / 1e6:.1f} of {total / 1e6:.1f} MB)\n")
                self.out.flush()

    def finish(self) -> None:
        """The download is complete: the 100 % line (and the end of the bar's line on a terminal)."""
        with self._lock:
            bars = list(self._bars.values())
        if bars:
            total = max(total for _, total in bars)
            self.report(-1, total, total, finished=True)
        if self.tty and self._shown >= 0:
            self.out.write("\n")
            self.out.flush()

    def abandon(self) -> None:
        """The download failed: end the bar's line, without claiming 100 %."""
        if self.tty and self._shown >= 0:
            self.out.write("\n")
            self.out.flush()


def download(model: str, *, out: TextIO, tty: bool) -> str:
    """Fetch ``model`` (a name faster-whisper knows, or ``owner/name``) into the cache; its directory."""
    repo = repo_for(model)
    import huggingface_hub  # type: ignore[import-untyped, import-not-found, unused-ignore]

    progress = Progress(model, out, tty=tty)
    try:
        path = huggingface_hub.snapshot_download(repo, allow_patterns=ALLOW_PATTERNS, tqdm_class=progress.bar_class())
    except Exception as exc:  # no network, an unknown repository, a full disk: one line, not a traceback
        progress.abandon()
        detail = " ".join(str(exc).split())
        raise DownloadError(f"cannot fetch {model} ({repo}): {exc.__class__.__name__}: {detail[:300]}") from None
    progress.finish()
    return str(path)


def verify(path: str, *, device: str = "cpu", compute_type: str = "int8") -> None:
    """Load the model once (CTranslate2 reads and checks every tensor); raises :class:`DownloadError`."""
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not os.path.exists(os.path.join(path, name)):
            raise DownloadError(f"{path} has no {name}: the download is incomplete")
    try:
        from faster_whisper import WhisperModel  # type: ignore[import-untyped, import-not-found, unused-ignore]

        WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=1)
    except Exception as exc:
        raise DownloadError(f"the model in {path} does not load: {exc.__class__.__name__}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sttd-engine download",
        description="Fetch a faster-whisper model for sttd's offline engine (from the Hugging Face Hub, "
        "or HF_ENDPOINT), verify it and print where it went.",
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    parser.add_argument("--no-verify", action="store_true", help="do not load the model after fetching it")
    args = parser.parse_args(argv)
    model: str = args.model
    try:
        if os.path.isdir(os.path.expanduser(model)):
            path = os.path.expanduser(model)  # a directory: nothing to fetch, only to check
        else:
            path = download(model, out=sys.stderr, tty=sys.stderr.isatty())
        if not args.no_verify:
            verify(path)
    except DownloadError as exc:
        print(f"sttd-engine download: {exc}", file=sys.stderr)
        return 1
    print(f"sttd-engine download: {model} is ready", file=sys.stderr)
    print(path)
    return 0
