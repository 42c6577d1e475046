"""The files sttd reads (the API key, the state) and writes (the state), against real files, FIFOs and devices.

A FIFO or a device given where a file is expected must give a quick error
naming the config key (a FIFO would block ``open``; ``/dev/zero`` would be
read until memory runs out); the key itself never appears in an error. A
state file that cannot be written is :class:`StateNotSavedError`, on a real
read-only and a real full file system (a private mount namespace). Every
wait has a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from sttd import state
from sttd.credentials import find_api_key
from sttd.errors import CredentialsError, StateNotSavedError

T = TypeVar("T")
KEY = "sk-test-files-0123456789abcdef"
QUICK_S = 5.0
"""A refusal must come within this (a hang would never end)."""


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result or exception, failing the test if it takes longer than ``seconds``."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:
            outcome.append((False, exc))

    worker = threading.Thread(target=run, daemon=True)  # a hung call must not hang the test run
    started = time.monotonic()
    worker.start()
    worker.join(seconds)
    assert outcome, f"still running after {seconds} s"
    assert time.monotonic() - started < seconds
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def refusal(api_key_file: str) -> str:
    with pytest.raises(CredentialsError) as caught:
        within(QUICK_S, lambda: find_api_key(api_key_file))
    return str(caught.value)


@pytest.fixture(autouse=True)
def _no_other_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


# ------------------------------------------------------------------ the API key file


def test_a_fifo_as_key_file_is_refused_at_once_naming_the_key(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    assert refusal(str(fifo)) == f"realtime.api_key_file: {fifo} is not a regular file"


def test_dev_zero_and_a_directory_as_key_file_are_refused_naming_the_key(tmp_path: Path) -> None:
    assert refusal("/dev/zero") == "realtime.api_key_file: /dev/zero is not a regular file"
    assert refusal(str(tmp_path)) == f"realtime.api_key_file: {tmp_path} is not a regular file"


def test_a_huge_missing_or_empty_key_file_is_refused_without_showing_its_content(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    huge.write_text(KEY * 200)
    message = refusal(str(huge))
    assert message == f"realtime.api_key_file: {huge} is larger than 4096 bytes"
    assert refusal(str(tmp_path / "missing")) == (
        f"realtime.api_key_file: cannot read {tmp_path / 'missing'}: No such file or directory"
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert refusal(str(empty)) == f"realtime.api_key_file: {empty} is empty"
    binary = tmp_path / "binary"
    binary.write_bytes(KEY.encode() + b"\xff\xfe")
    message = refusal(str(binary))
    assert message == f"realtime.api_key_file: {binary} is not UTF-8 text"
    assert KEY not in message


def test_a_regular_key_file_is_read(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    found = within(QUICK_S, lambda: find_api_key(str(key)))
    assert found is not None and (found.value, found.origin) == (KEY, str(key))


def test_the_systemd_credential_is_read_checked_and_skipped_when_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-0123")
    found = find_api_key("")
    assert found is not None and found.origin == "OPENAI_API_KEY"  # no credential file: the next source
    credential = tmp_path / "openai-api-key"
    os.mkfifo(credential)
    assert refusal("") == f"the systemd credential 'openai-api-key': {credential} is not a regular file"
    credential.unlink()
    credential.write_text(KEY)
    credential.chmod(0o600)
    found = find_api_key("")
    assert found is not None and (found.value, found.origin) == (KEY, str(credential))


# ------------------------------------------------------------------ the state file


def test_a_fifo_or_device_as_state_file_gives_defaults_at_once_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    assert within(QUICK_S, lambda: state.load(fifo)) == state.PersistedState()
    assert f"ignoring the state file: {fifo} is not a regular file" in caplog.text
    device = tmp_path / "zero.json"
    device.symlink_to("/dev/zero")
    assert within(QUICK_S, lambda: state.load(device)) == state.PersistedState()
    big = tmp_path / "big.json"
    big.write_text('{"enabled": false, "pad": "' + "x" * 70000 + '"}')
    assert within(QUICK_S, lambda: state.load(big)) == state.PersistedState()
    assert f"{big} is larger than 65536 bytes" in caplog.text


def test_saving_over_a_directory_is_state_not_saved(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    with pytest.raises(StateNotSavedError) as caught:
        state.save(path, state.PersistedState(enabled=False))
    assert str(caught.value).startswith(f"cannot save the state file {path}: ")
    assert caught.value.dbus_name == "StateNotSaved"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind


SAVE_IN_MOUNT = r"""
import sys
from pathlib import Path
from sttd import state
from sttd.errors import StateNotSavedError
try:
    state.save(Path(sys.argv[1]) / "sttd" / "state.json", state.PersistedState(enabled=False, language="fr"))
except StateNotSavedError as exc:
    print(exc.dbus_name, exc, sep="\n")
else:
    print("saved")
"""


def save_in_private_mount(directory: Path, mount: str) -> list[str]:
    """Save the state below ``directory`` with ``mount`` (a shell command) applied there, in a private mount
    namespace (a real read-only or full file system, whoever runs the tests)."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed"
    mapping = [] if os.geteuid() == 0 else ["--map-root-user"]
    script = f'{mount} && exec "$0" -c "$1" "$2"'
    argv = [unshare, "--mount", "--propagation", "private", *mapping, "sh", "-ec", script]
    result = subprocess.run(
        [*argv, sys.executable, SAVE_IN_MOUNT, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_a_read_only_state_directory_is_state_not_saved(tmp_path: Path) -> None:
    (tmp_path / "sttd").mkdir()
    lines = save_in_private_mount(tmp_path, f"mount --bind -o ro '{tmp_path}' '{tmp_path}'")
    path = tmp_path / "sttd" / "state.json"
    assert lines == ["StateNotSaved", f"cannot save the state file {path}: Read-only file system"]
    assert not path.exists()


def test_a_full_file_system_is_state_not_saved(tmp_path: Path) -> None:
    # A 4 KiB tmpfs already filled: the temporary file can be created, but not written.
    fill = f"mount -t tmpfs -o size=4k tmpfs '{tmp_path}' && mkdir '{tmp_path}/sttd'"
    fill += f" && (dd if=/dev/zero of='{tmp_path}/fill' bs=1k count=64 2>/dev/null || true)"
    lines = save_in_private_mount(tmp_path, fill)
    path = tmp_path / "sttd" / "state.json"
    assert lines == ["StateNotSaved", f"cannot save the state file {path}: No space left on device"]
