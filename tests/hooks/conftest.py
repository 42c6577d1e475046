"""Fixtures of the hook tests: a private Xvfb display and a real X client holding its focus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..processes import end_process, start_xvfb
from .harness import XClient


@pytest.fixture
def x_display(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private Xvfb; ``DISPLAY`` points at it and ``WAYLAND_DISPLAY`` is unset for the test."""
    process, display = start_xvfb(tmp_path)
    try:
        monkeypatch.setenv("DISPLAY", display)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        yield display
    finally:
        end_process(process)


@pytest.fixture
def x_client(x_display: str, tmp_path: Path) -> Iterator[XClient]:
    client = XClient(x_display, tmp_path / "xclient.log")
    try:
        yield client
    finally:
        client.close()
