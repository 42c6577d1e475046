"""One redaction for what leaves sttd: log records (a real ``sttd.logsetup`` in a child process), sd_notify
``STATUS=`` (a notify socket the test binds), and the secrets sttd loads (a key file, a real local token
endpoint) all registered. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sttd.credentials import CredentialSource, find_api_key
from sttd.redact import REDACTED, excerpt, outward, redact, register_secret
from sttd.systemd import STATUS_CHARS, Notifier

ROOT = Path(__file__).resolve().parent.parent
SHAPED = ("sk-proj-AbCdEf0123456789_-xyz", "ek_68af0123456789abcdef")


def test_registered_secrets_and_key_shaped_strings_are_replaced() -> None:
    register_secret("not-shaped-like-a-key-but-secret")
    text = f"server said: invalid key {SHAPED[0]}, token {SHAPED[1]}, and not-shaped-like-a-key-but-secret."
    assert redact(text) == f"server said: invalid key {REDACTED}, token {REDACTED}, and {REDACTED}."
    assert redact("sk-short is no key; task-1234567890 neither") == "sk-short is no key; task-1234567890 neither"


def test_outward_redacts_then_cuts_and_excerpt_quotes_short() -> None:
    assert outward("fine") == "fine"
    # The key straddles the cut: it is redacted before cutting, not shown in part.
    long = "x" * 289 + " " + SHAPED[0] + " " + "y" * 10_000_000
    shown = outward(long)
    assert len(shown) == 300 and shown.endswith("…")
    assert shown == "x" * 289 + " " + REDACTED[:9] + "…"
    quoted = excerpt("a" * 10_000_000)
    assert quoted == repr("a" * 60) + "... (10000000 characters)"
    assert excerpt(f"key {SHAPED[1]}") == repr(f"key {REDACTED}")


LOGGING_CHILD = r"""
import logging, sys
from sttd import logsetup
from sttd.redact import register_secret
logsetup.setup("DEBUG")
register_secret(sys.argv[1])
log = logging.getLogger("sttd.test")
log.error("server error: %s", "Incorrect API key provided: " + sys.argv[1])
log.warning("echoed %s and %s", sys.argv[2], sys.argv[3])
try:
    raise RuntimeError("failed with " + sys.argv[1])
except RuntimeError:
    log.exception("traceback follows")
log.info("done")
"""


def test_no_secret_or_key_shaped_string_reaches_the_log() -> None:
    secret = "registered-secret-0123456789"
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_CHILD, secret, *SHAPED],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert "done" in log and "traceback follows" in log and "RuntimeError: failed with [redacted]" in log
    assert "Incorrect API key provided: [redacted]" in log
    for value in (secret, *SHAPED):
        assert value not in log


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    directory = Path(tempfile.mkdtemp(prefix="sttd-notify-", dir="/tmp"))  # socket paths stay short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / "notify"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(directory / "notify"))
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_status_lines_sent_to_systemd_are_redacted_and_short(notify_socket: socket.socket) -> None:
    register_secret("another-registered-secret-42")
    notifier = Notifier()
    notifier.status(f"error: the service said: Incorrect API key provided: {SHAPED[0]}")
    assert (
        notify_socket.recv(65536).decode() == f"STATUS=error: the service said: Incorrect API key provided: {REDACTED}"
    )
    notifier.ready("error: another-registered-secret-42\n" + "z" * 10_000)
    message = notify_socket.recv(65536).decode()
    assert message.startswith(f"READY=1\nSTATUS=error: {REDACTED} zzz")
    assert "\n" not in message.split("\n", 1)[1] and len(message) == len("READY=1\nSTATUS=") + STATUS_CHARS


class _TokenEndpoint(http.server.BaseHTTPRequestHandler):
    token = "tok-not-key-shaped-0123456789"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"value": self.token, "expires_at": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_every_secret_sttd_loads_is_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    key = tmp_path / "key"
    key.write_text("a-key-from-a-file-not-shaped\n")
    key.chmod(0o600)
    assert find_api_key(str(key)) is not None
    monkeypatch.setenv("OPENAI_API_KEY", "a-key-from-the-environment")
    assert find_api_key("") is not None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        source = CredentialSource(None, f"http://127.0.0.1:{server.server_address[1]}/token")
        token = asyncio.run(asyncio.wait_for(source.bearer(), 20))
    finally:
        server.shutdown()
        thread.join(5)
    assert token == _TokenEndpoint.token
    text = f"{token} a-key-from-a-file-not-shaped a-key-from-the-environment"
    assert redact(text) == " ".join([REDACTED] * 3)
