"""``scripts/install`` puts the unit, the activation file and the man pages in their XDG places (HOME and XDG
dirs pointed at a temporary directory; ``--python`` reuses this test environment, so nothing is downloaded),
and ``--uninstall`` takes them away; the installed unit passes ``systemd-analyze --user verify``.

Every wait has a deadline; a missing tool fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .bus import require
from .daemon import command
from .systemd_harness import BUS_NAME, ROOT, UserDirs, install, uninstall

# --------------------------------------------------------------------------- scripts/install


def test_install_puts_everything_in_its_xdg_place_and_uninstall_takes_it_away(tmp_path: Path) -> None:
    dirs = UserDirs(tmp_path)
    env = dirs.env(xdg=False, OPENAI_API_KEY="sk-install-test-0123456789")
    out = install(dirs, env=env).stdout
    assert "no systemd user manager" in out  # none runs for this user: nothing was started

    sttd_path = Path(sys.executable).parent / "sttd"
    source_unit = (ROOT / "systemd" / "sttd.service").read_text().splitlines()
    unit = dirs.unit.read_text().splitlines()
    assert [line for line in unit if line.startswith("ExecStart=")] == [f"ExecStart={sttd_path}"]
    assert [a for a, b in zip(unit, source_unit, strict=True) if a != b] == [f"ExecStart={sttd_path}"]
    activation = dirs.activation.read_text()
    assert f"\nExec={sttd_path}\n" in activation
    assert "\nSystemdService=sttd.service\n" in activation and f"\nName={BUS_NAME}\n" in activation
    for page in dirs.pages:
        assert page.read_bytes() == (ROOT / "man" / page.name).read_bytes()
        assert page.stat().st_mode & 0o777 == 0o644
    for exe in ("sttd", "sttctl", "sttd-ibus"):
        assert os.readlink(dirs.bin / exe) == str(Path(sys.executable).parent / exe)
    # The IBus component names that sttd-ibus, where IBUS_COMPONENT_PATH (with IBus's own folder) points.
    component = dirs.data / "ibus" / "component" / "sttd.xml"
    assert f"<exec>{dirs.bin / 'sttd-ibus'} --ibus</exec>" in component.read_text()
    ibus_env = (dirs.home / ".config" / "environment.d" / "60-sttd-ibus.conf").read_text()
    assert ibus_env == f"IBUS_COMPONENT_PATH={component.parent}:/usr/share/ibus/component\n"
    key = dirs.config / "sttd" / "openai-api-key"
    assert key.read_text() == "sk-install-test-0123456789\n"
    assert key.stat().st_mode & 0o777 == 0o600
    config = dirs.config / "sttd" / "config.toml"
    check = subprocess.run(
        [command("sttd"), "--check-config", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    assert f"api_key_file = '{key}'" in config.read_text()

    # Again, as an update: the key and the config are the user's now and stay as they are.
    config.write_text(config.read_text() + "\n[audio]\nchunk_ms = 20\n")
    before = config.read_text()
    install(dirs, env=dirs.env(xdg=False, OPENAI_API_KEY="sk-another-key-0123456789"))
    assert key.read_text() == "sk-install-test-0123456789\n"
    assert config.read_text() == before

    out = uninstall(dirs, env=dirs.env(xdg=False)).stdout
    assert "removed" in out
    for path in [dirs.unit, dirs.activation, *dirs.pages, dirs.bin / "sttd", dirs.bin / "sttctl", component]:
        assert not path.exists() and not path.is_symlink(), f"{path} is still there"
    assert key.exists() and config.read_text() == before  # the user's own files stay
    assert Path(sys.executable).exists()  # --python's environment is not the installer's to remove


def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require("man")  # verify runs it for every Documentation= page
    dirs = UserDirs(tmp_path)
    install(dirs)
    # verify runs `man` for each Documentation= entry: MANPATH is where install put the pages.
    result = subprocess.run(
        [require("systemd-analyze"), "--user", "verify", str(dirs.unit)],
        env=dirs.env(MANPATH=str(dirs.data / "man")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
