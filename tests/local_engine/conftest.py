"""Fixtures of the offline engine's tests: no hub, the test model, and one engine for the whole package.

The engine is package-scoped, not module-scoped: its tests are in several files, and loading the model
costs seconds, so each worker starts it once, not once per file.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sttd.config import LocalConfig
from sttd.engine.supervisor import EngineProcess, engine_available

from .harness import MODEL_DIR, RunningEngine, in_thread


@pytest.fixture(scope="package", autouse=True)
def offline() -> Iterator[None]:
    """Nothing here may fetch a model from a hub: an engine given a name instead of a directory fails fast."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        del os.environ["HF_HUB_OFFLINE"]
    else:
        os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="package")
def model_dir() -> Path:
    if not engine_available():
        pytest.fail("faster-whisper is not installed: pip install -e '.[local]' (scripts/test does)")
    if not (MODEL_DIR / "model.bin").exists():
        pytest.fail(f"no test model in {MODEL_DIR}: run scripts/fetch-test-model (scripts/test does)")
    return MODEL_DIR


@pytest.fixture(scope="package")
def engine(model_dir: Path) -> Iterator[RunningEngine]:
    sock_dir = Path(tempfile.mkdtemp(prefix="sttd-engine-", dir="/tmp"))  # a unix socket path must stay short
    sock = str(sock_dir / "engine.sock")

    async def body(stop: asyncio.Event, ready: Callable[[Any], None]) -> None:
        process = EngineProcess(
            LocalConfig(model=str(model_dir)), log_level="DEBUG", unix_socket=sock, listen="127.0.0.1:0"
        )
        async with process as ep:
            ready(ep)
            await stop.wait()

    endpoint, stop = in_thread(body)
    try:
        yield RunningEngine(endpoint.url, endpoint.api_key, sock, endpoint)
    finally:
        stop()
        assert not os.path.exists(sock), "the engine left its socket behind"
        sock_dir.rmdir()
