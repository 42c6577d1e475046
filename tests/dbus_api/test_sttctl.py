"""``sttctl``: every subcommand and exit code, ``listen``, bash completion and the documented Waybar adapter."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

from sttd.ctl import COMMANDS
from sttd.languages import ISO_639_1

from ..bus import SessionBus, require, wait_until
from ..daemon import Listener, Sttd, command, leaks_python, sttctl
from .clients import REPO, Clients, Setup

# --------------------------------------------------------------------- sttctl


def test_sttctl_every_subcommand_and_its_exit_code(tmp_path: Path, sttd: Sttd, clients: Clients) -> None:
    listener = Listener(sttd)
    try:
        first = listener.seen[0]
        assert first["type"] == "properties"
        assert {"state", "enabled", "language", "transcript", "source", "last_error", "level"} <= set(first)

        wait_until(lambda: sttd.status()["shortcuts"] != "binding", 10, "sttd to look for the shortcuts portal")
        status = sttd.ctl("status", "--json")
        assert status.returncode == 0
        assert json.loads(status.stdout) == {
            "state": "idle",
            "language": "",
            "enabled": True,
            "source": "",
            "transcript": "",
            "last_error": "",
            "engine": "openai",
            "model": "gpt-live-transcribe",
            "price": "$0.017 per minute",
            "profile": "",
            "output": "none",
            "output_reason": '[output] mode = "none"',
            "shortcuts": "unavailable (no desktop portal (org.freedesktop.portal.Desktop) on the session bus)",
        }
        text = sttd.ctl("status")
        assert text.returncode == 0 and "state:      idle" in text.stdout
        assert "model:      gpt-live-transcribe ($0.017 per minute)" in text.stdout.splitlines()
        assert 'output:     none ([output] mode = "none")' in text.stdout.splitlines()
        nothing = sttd.ctl("undo")
        assert nothing.returncode == 1 and "nothing that sttd inserted is left to undo" in nothing.stderr

        assert sttd.ctl("lang").stdout == "auto\n"
        assert sttd.ctl("lang", "de").returncode == 0
        assert sttd.ctl("lang").stdout == "de\n"
        bad = sttd.ctl("lang", "deutsch")
        assert (bad.returncode, bad.stdout) == (1, "")
        assert bad.stderr == (
            "sttctl: 'deutsch' is not an ISO-639-1 language code (like 'en' or 'de') or '' for automatic\n"
        )
        assert sttd.ctl("lang", "").returncode == 0
        assert sttd.ctl("lang").stdout == "auto\n"

        devices = sttd.ctl("devices")
        assert devices.returncode == 0
        assert "* mic\tRemapped Monitor of Null Output" in devices.stdout.splitlines()

        assert sttd.ctl("disable").returncode == 0
        refused = sttd.ctl("start")
        assert refused.returncode == 1 and "disabled" in refused.stderr
        assert "(disabled)" in sttd.ctl("status").stdout
        assert sttd.ctl("enable").returncode == 0

        for args, state in ((("start",), "listening"), (("toggle",), "idle"), (("toggle",), "listening")):
            done = sttd.ctl(*args)
            assert done.returncode == 0, done.stderr
            sttd.wait_state(state)
        assert sttd.ctl("cancel").returncode == 0
        sttd.wait_state("idle")
        for args in (("stop",), ("cancel",), ("send",), ("purge",)):  # idle: nothing to do, no error
            assert sttd.ctl(*args).returncode == 0
        listener.wait_for(lambda e: e["type"] == "triggered" and e["name"] == "purge", 10, "Triggered purge")

        # The Waybar adapter from docs/desktop.md reads `status --json` as well.
        adapter = _waybar_adapter(tmp_path)
        shown = subprocess.run(
            ["sh", "-c", f"{command('sttctl')} status --json | python3 {adapter}"],
            env=sttd.env,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.splitlines()
        assert json.loads(shown[0])["alt"] == "idle"
    finally:
        listener.close()

    # `listen --json`: one JSON object per line, every event in order.
    listener.drain()
    types = [e["type"] for e in listener.seen]
    assert "transcript" not in types
    assert [e["name"] for e in listener.seen if e["type"] == "triggered"] == ["send", "purge"]
    states = [e["state"] for e in listener.seen if e["type"] == "properties" and "state" in e]
    assert states[0] == "idle" and states[-1] == "idle" and "listening" in states
    assert [e["enabled"] for e in listener.seen if e["type"] == "properties" and "enabled" in e][1:] == [False, True]


def test_sttctl_listen_prints_transcripts_and_follows_restarts(setup: Setup, sttd: Sttd) -> None:
    text = subprocess.Popen([command("sttctl"), "listen"], env=sttd.env, stdout=subprocess.PIPE, text=True)
    printed: list[str] = []

    def read() -> None:
        assert text.stdout is not None
        printed.extend(text.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    listener = Listener(sttd)
    try:
        # The plain listener prints nothing until something happens, so its
        # subscription is proven by what it prints: send until it has.
        def sent() -> bool:
            assert sttd.ctl("send").returncode == 0
            listener.wait_for(lambda e: e["type"] == "triggered", 10, "Triggered")
            return bool(printed)

        wait_until(sent, 15, "sttctl listen to print a send", interval=0.2)
        assert sttd.terminate() == 0
        listener.wait_for(lambda e: e == {"type": "daemon", "running": False}, 10, "sttd leaving the bus")
        again = setup.daemon("again")
        try:
            listener.wait_for(lambda e: e == {"type": "daemon", "running": True}, 10, "sttd coming back")
            back = listener.wait_for(
                lambda e: e["type"] == "properties" and "enabled" in e and e is not listener.seen[0],
                10,
                "the state again",
            )
            assert back["state"] == "idle"
            assert again.ctl("purge").returncode == 0
            listener.wait_for(
                lambda e: e["type"] == "triggered" and e["name"] == "purge", 10, "Triggered from the new daemon"
            )
            wait_until(lambda: printed[-1:] == ["[purge] \n"], 10, "sttctl listen to print the purge")
        finally:
            again.kill()
    finally:
        listener.close()
        text.send_signal(signal.SIGINT)
        text.wait(10)
        reader.join(10)
    assert text.returncode == 0
    assert printed[0] == "[send] \n"
    assert printed[-1] == "[purge] \n"


def test_sttctl_exit_codes_without_a_daemon(session_bus: SessionBus) -> None:
    env = {**os.environ, **session_bus.env()}
    runs = {
        args: subprocess.Popen(
            [command("sttctl"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in [
            ("start",),
            ("stop",),
            ("toggle",),
            ("cancel",),
            ("send",),
            ("purge",),
            ("status",),
            ("status", "--json"),
            ("lang",),
            ("lang", "de"),
            ("enable",),
            ("disable",),
            ("listen",),
            ("listen", "--json"),
            ("devices",),
        ]
    }
    usage = {
        args: subprocess.Popen(
            [command("sttctl"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in [(), ("bogus",), ("lang", "de", "fr"), ("status", "--xml"), ("start", "now"), ("--json",)]
    }
    for args, process in runs.items():
        out, err = process.communicate(timeout=30)
        assert process.returncode == 3, (args, out, err)
        assert err.startswith("sttctl: cannot reach sttd") and err.endswith("is sttd running?\n"), (args, err)
        assert not leaks_python(err)
    for args, process in usage.items():
        out, err = process.communicate(timeout=30)
        assert process.returncode == 2, (args, out, err)
        assert "usage: sttctl" in err
    no_bus = {**env, "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/sttd-test-bus"}
    done = sttctl(no_bus, "status")
    assert done.returncode == 3 and "is sttd running?" in done.stderr


# ------------------------------------------------------- completion, Waybar


def _complete(line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end) with completion/sttctl.bash sourced."""
    script = (
        f"source {REPO / 'completion' / 'sttctl.bash'}\n"
        "complete -p sttctl >&2\n"
        'read -ra COMP_WORDS <<<"$1"; [[ $1 == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE=$1; COMP_POINT=${#1}\n"
        '_sttctl sttctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
        # compgen on the same word list, as a user's own function would call it
        'compgen -W "$_sttctl_commands" -- "${COMP_WORDS[COMP_CWORD]}" | sed "s/^/compgen:/"\n'
    )
    done = subprocess.run(
        [require("bash"), "--norc", "--noprofile", "-c", script, "bash", line],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert done.stderr.strip() == "complete -F _sttctl sttctl"
    offered = [w for w in done.stdout.splitlines() if w and not w.startswith("compgen:")]
    if line.count(" ") == 1:  # completing the subcommand: the function agrees with compgen on the list
        assert [w for w in offered if not w.startswith("-")] == [
            w.removeprefix("compgen:") for w in done.stdout.splitlines() if w.startswith("compgen:")
        ]
    return offered


def test_bash_completion_offers_subcommands_options_and_languages() -> None:
    subcommands = [name for name, _ in COMMANDS]
    assert sorted(_complete("sttctl ")) == sorted(subcommands)
    assert _complete("sttctl st") == ["start", "stop", "status"]
    assert _complete("sttctl t") == ["toggle"]
    assert _complete("sttctl -") == ["--help", "--version"]
    assert _complete("sttctl status ") == ["--json"]
    assert _complete("sttctl status -") == ["--json", "--help"]
    assert _complete("sttctl status --json ") == []
    assert _complete("sttctl listen --") == ["--json", "--help"]
    assert _complete("sttctl start ") == []
    assert _complete("sttctl lang d") == ["da", "de", "dv", "dz"]
    assert sorted(_complete("sttctl lang ")) == sorted(ISO_639_1)
    assert _complete("sttctl lang de ") == []
    assert _complete("sttctl nonsense ") == []
    assert _complete("sttctl start -") == ["--profile", "--lang", "--help"]
    assert _complete("sttctl toggle --profile email --lang d") == ["da", "de", "dv", "dz"]
    assert _complete("sttctl start --profile ") == []  # a name from the config: nothing to guess
    assert _complete("sttctl shape --") == ["--config", "--profile", "--lang", "--help"]
    assert _complete("sttctl model ") == ["download", "list"]
    assert _complete("sttctl model list ") == []


def _waybar_adapter(tmp_path: Path) -> Path:
    """The adapter script of docs/desktop.md, exactly as documented."""
    doc = (REPO / "docs" / "desktop.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", doc, re.DOTALL) if "Waybar adapter" in block]
    path = tmp_path / "sttd-waybar"
    path.write_text(code)
    return path


def test_the_documented_waybar_adapter_turns_listen_lines_into_waybar_json(tmp_path: Path) -> None:
    adapter = _waybar_adapter(tmp_path)
    lines = [
        {
            "type": "properties",
            "state": "idle",
            "enabled": True,
            "language": "",
            "transcript": "",
            "source": "",
            "last_error": "",
            "level": 0.0,
        },
        {"type": "properties", "state": "connecting"},
        {"type": "properties", "source": "mic"},  # nothing Waybar shows changes: no line
        {"type": "properties", "state": "listening"},
        {"type": "properties", "level": 0.4},
        {"type": "transcript", "text": "hello", "final": True, "item_id": "i1"},
        {"type": "properties", "transcript": "hello"},
        {"type": "daemon", "running": False},
    ]
    done = subprocess.run(
        ["python3", str(adapter)],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    shown = [json.loads(line) for line in done.stdout.splitlines()]
    assert [s["alt"] for s in shown] == ["idle", "connecting", "listening", "listening", "stopped"]
    assert all(set(s) == {"text", "alt", "class", "tooltip"} for s in shown)
    assert "pending: hello" in shown[3]["tooltip"]
