"""The offline engine as a user meets it: its model fetched with progress, its private socket, a missing model.

The model download runs against :class:`tests.hub_server.HubServer`, a
Hugging Face Hub on 127.0.0.1 serving the test's Whisper base files, found
through the hub client's documented ``HF_ENDPOINT``; the cache is the test's
own ``HF_HOME``. There is no network here: a model that is not cached cannot
be fetched, which is what the daemon test relies on.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import ssl
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sttd import config
from sttd.engine.download import missing_model_message
from sttd.engine.whisper_model import ModelUnavailableError, choose_device, cuda_device_count
from sttd.errors import ConfigError
from sttd.sockets import ListenError, parse_listen, private_runtime_dir, split_unix_url, unix_url

from .bus import SessionBus, wait_until
from .daemon import Sttd, command
from .hub_server import HubServer
from .sound import SoundServer

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = Path(os.environ.get("STTD_TEST_MODEL", REPO / ".cache" / "whisper-base"))
REPO_ID = "Systran/faster-whisper-base"  # what faster-whisper's loader fetches for "base"


@pytest.fixture
def hub_env(tmp_path: Path) -> dict[str, str]:
    """A private Hugging Face cache, online (the hub is whatever HF_ENDPOINT the test sets)."""
    if not (MODEL_DIR / "model.bin").exists():
        pytest.fail(f"no test model in {MODEL_DIR}: run scripts/fetch-test-model (scripts/test does)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    for key in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_ENDPOINT"):
        env.pop(key, None)
    return env


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer(REPO_ID, MODEL_DIR, chunk_delay_s=0.002).running() as server:
        yield server


def test_download_shows_percent_lines_then_the_engine_loads_the_model_offline(
    hub: HubServer, hub_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**hub_env, "HF_ENDPOINT": hub.url}
    done = subprocess.run(
        [command("sttd-engine"), "download", "base"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = re.findall(r"^download base: (\d+)% \([\d.]+ of ([\d.]+) MB\)", done.stderr, re.MULTILINE)
    # Lines count against the whole as known so far; a file that starts late (a loaded machine) can make the
    # whole grow, and the lines then start again: against the final whole they only go up, to 100.
    final = [int(percent) for percent, total in lines if total == lines[-1][1]]
    assert len(final) >= 5 and final == sorted(final) and final[-1] == 100, done.stderr
    assert "\r" not in done.stderr  # not a terminal: lines, no bar redrawn in place
    where = Path(done.stdout.strip())
    assert where.is_relative_to(tmp_path / "hf") and (where / "model.bin").stat().st_size == (
        (MODEL_DIR / "model.bin").stat().st_size
    )
    assert ("GET", f"/{REPO_ID}/resolve/0123456789abcdef0123456789abcdef01234567/model.bin") in hub.requests

    # Offline now, by name: the engine finds what download fetched.
    sock = Path(tempfile.mkdtemp(prefix="sttd-", dir="/tmp")) / "engine.sock"
    offline = {**hub_env, "HF_HUB_OFFLINE": "1"}
    engine = subprocess.Popen(
        [command("sttd-engine"), "--model", "base", "--unix", str(sock), "--exit-with-stdin"],
        env=offline,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert engine.stdout is not None and engine.stdin is not None
        ready = json.loads(engine.stdout.readline())
        assert ready["unix_socket"] == str(sock)
        assert json.loads(engine.stdout.readline()) == {"model": "loaded"}
    finally:
        engine.terminate()
        engine.wait(15)
        sock.parent.rmdir()


def test_sttctl_model_download_on_a_terminal_draws_a_bar_and_list_shows_where_it_went(
    hub: HubServer, hub_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**hub_env, "HF_ENDPOINT": hub.url, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    (tmp_path / "config" / "sttd").mkdir(parents=True)
    (tmp_path / "config" / "sttd" / "config.toml").write_text('[local]\nmodel = "base"\n', encoding="utf-8")
    before = subprocess.run([command("sttctl"), "model", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert re.search(r"^\* base +not downloaded$", before.stdout, re.MULTILINE), before.stdout
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [command("sttctl"), "model", "download"],  # the configured model
            env=env,
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert done.returncode == 0, shown
    text = shown.decode(errors="replace")
    assert "\rdownload base: [" in text and "] 100% (" in text, text
    assert text.count("\r") >= 5  # redrawn in place as it goes
    where = done.stdout.decode().strip()
    assert where.startswith(str(tmp_path / "hf"))
    after = subprocess.run([command("sttctl"), "model", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert f"* base                 {where}\n" in after.stdout, after.stdout


def test_download_of_an_unknown_name_says_which_names_exist(hub_env: dict[str, str]) -> None:
    done = subprocess.run(
        [command("sttd-engine"), "download", "bsae.en"], env=hub_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.startswith("sttd-engine download: unknown model 'bsae.en': use one of ") and "base.en" in (
        done.stderr
    )


def test_sttd_runs_its_engine_on_a_private_socket_and_names_a_missing_model_and_its_fix(
    tmp_path: Path, hub_env: dict[str, str], session_bus: SessionBus, pulse_server: SoundServer
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: a unix socket path has 107 bytes
    config = tmp_path / "config.toml"
    config.write_text('[realtime]\nengine = "local"\n\n[local]\nmodel = "base"\n', encoding="utf-8")
    env = {
        **hub_env,
        **session_bus.env(),
        "PULSE_SERVER": pulse_server.server,
        "OPENAI_API_KEY": "",
        "XDG_RUNTIME_DIR": str(runtime),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: the model cannot be fetched
    }
    daemon = Sttd(tmp_path, env, config)
    try:
        daemon.wait_ready(30)
        match = None

        def engine_listening() -> bool:
            nonlocal match
            match = re.search(r"local engine (\d+) listening on", daemon.log)
            return match is not None

        wait_until(engine_listening, 60, "the local engine to listen")
        assert match is not None
        pid = int(match.group(1))
        private = runtime / "sttd"
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert stat.S_ISSOCK((private / "engine.sock").stat().st_mode)
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        assert f"pid={pid}," not in listening, listening  # no TCP port at all

        assert daemon.ctl("start").returncode == 0
        daemon.wait_state("error", 60)
        expected = missing_model_message("base")
        status = daemon.status()
        assert status["last_error"] == expected
        assert (status["model"], status["price"]) == ("local:base", "offline, free")  # not a service's price
        assert f"last error: {expected}\n" in daemon.ctl("status").stdout
        assert expected in daemon.log  # the journal has the same sentence
        assert "sttd-engine download base" in expected
    finally:
        daemon.kill()
        for leftover in sorted(runtime.rglob("*"), reverse=True):
            leftover.unlink() if not leftover.is_dir() else leftover.rmdir()
        runtime.rmdir()


def test_device_auto_takes_cuda_when_ctranslate2_finds_it_else_the_cpu() -> None:
    assert choose_device("auto", "int8", 0) == ("cpu", "int8")
    assert choose_device("auto", "int8", 1) == ("cuda", "int8_float16")
    assert choose_device("auto", "float16", 2) == ("cuda", "float16")  # an explicit choice is kept
    assert choose_device("cuda", "int8", 1) == ("cuda", "int8_float16")
    assert choose_device("cpu", "int8", 4) == ("cpu", "int8")  # the CPU when asked, whatever is there
    with pytest.raises(ModelUnavailableError, match=r'device = "cuda": CTranslate2 finds no CUDA device'):
        choose_device("cuda", "int8", 0)
    assert cuda_device_count() == 0  # this machine has none: "auto" is the CPU here


def test_a_shared_engine_serves_wss_with_the_key_from_its_file(tmp_path: Path) -> None:
    """sttd-engine --host/--port --tls-cert/--tls-key --api-key-file: wss://, that key and no other."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    subprocess.run(
        [*openssl, "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-team-0123456789\n", encoding="utf-8")
    listen = [command("sttd-engine"), "--model", str(tmp_path / "no-model"), "--host", "127.0.0.1", "--port", "0"]
    engine = subprocess.Popen(
        [*listen, "--tls-cert", str(cert), "--tls-key", str(key), "--api-key-file", str(key_file), "--exit-with-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert engine.stdout is not None
        ready = json.loads(engine.stdout.readline())
        assert ready["url"].startswith("wss://127.0.0.1:") and ready["api_key"] == "sk-team-0123456789"
        trust = ssl.create_default_context(cafile=str(cert))

        async def main() -> None:
            with pytest.raises(InvalidStatus) as refused:
                await connect(ready["url"], ssl=trust, additional_headers={"Authorization": "Bearer sk-other"})
            assert refused.value.response.status_code == 401
            headers = {"Authorization": "Bearer sk-team-0123456789"}
            async with connect(ready["url"], ssl=trust, additional_headers=headers) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert first["type"] in ("session.created", "error")  # its model is missing: the point is TLS

        asyncio.run(main())
    finally:
        engine.terminate()
        engine.wait(15)


def test_listen_takes_loopback_host_port_only_and_the_config_names_the_key(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("8765", "127.0.0.1", "0.0.0.0:8765", "example.org:80", "127.0.0.1:70000", ":80"):
        with pytest.raises(ListenError):
            parse_listen(bad)
    path = tmp_path / "config.toml"
    path.write_text('[local]\nlisten = "0.0.0.0:8765"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"local\.listen: '0\.0\.0\.0' is not a loopback address"):
        config.load(path)


def test_a_unix_socket_url_round_trips() -> None:
    url = unix_url("/run/user/1000/sttd/engine.sock")
    assert url == "ws+unix://%2Frun%2Fuser%2F1000%2Fsttd%2Fengine.sock/v1/realtime?intent=transcription"
    assert split_unix_url(url) == ("/run/user/1000/sttd/engine.sock", "ws://localhost/v1/realtime?intent=transcription")
    assert split_unix_url("wss://api.openai.com/v1/realtime?intent=transcription")[0] is None


def test_the_private_directory_is_made_0700_and_tightened_when_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        made = Path(private_runtime_dir())
        assert made == runtime / "sttd" and stat.S_IMODE(made.stat().st_mode) == 0o700
        made.chmod(0o755)
        assert Path(private_runtime_dir()) == made and stat.S_IMODE(made.stat().st_mode) == 0o700
        monkeypatch.delenv("XDG_RUNTIME_DIR")
        fallback = Path(private_runtime_dir())  # none set: a fresh private directory
        assert stat.S_IMODE(fallback.stat().st_mode) == 0o700
        fallback.rmdir()
    finally:
        (runtime / "sttd").rmdir()
        runtime.rmdir()
