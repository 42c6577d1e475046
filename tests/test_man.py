"""The man pages: lint-clean, and complete against the code they document.

* ``mandoc -Tlint -Wall`` exits 0 and says nothing for every page, and
  ``groff -man -ww`` (which always exits 0) says nothing on stderr.
* ``sttd.toml(5)`` documents every config key, walking the dataclasses of
  :class:`sttd.config.Config`, in its section and with its default, and no
  key that does not exist; its MODELS tables agree with :mod:`sttd.models`
  (price, live text, turn detection, fields, shutdown date) for every model.
* ``sttd(1)`` and ``sttctl(1)`` document every option, choice and command of
  their argparse parsers, every exit status, and every environment variable
  the code reads.
* ``sttd(1)`` documents every D-Bus method, property (with its type and
  access), signal (with its arguments) of ``dbus/io.github.sttd.Sttd1.xml``
  and every D-Bus error sttd can answer with.

The pages are checked as ``mandoc -Tascii`` renders them, so what is checked
is what a reader sees.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import pkgutil
import re
import subprocess
import typing
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sttd
from sttd import cli as daemon
from sttd import config, ctl, models
from sttd.errors import SttdError

from .bus import require

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = ["sttd.1", "sttctl.1", "sttd.toml.5"]
INTERFACE_XML = ROOT / "dbus" / "io.github.sttd.Sttd1.xml"


class Page:
    """A page as ``mandoc -Thtml`` renders it: sections, subsections and tagged items (``.TP``) by name."""

    def __init__(self, name: str) -> None:
        html = subprocess.run(
            [require("mandoc"), "-Thtml", "-Ofragment", str(MAN / name)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        self.name = name
        self.root = ET.fromstring(f"<page>{html}</page>")

    def section(self, title: str, parent: ET.Element | None = None) -> ET.Element:
        """The section (``.SH``) or, under ``parent``, the subsection (``.SS``) titled ``title``."""
        kind, heading = ("Ss", "h2") if parent is not None else ("Sh", "h1")
        for element in (parent if parent is not None else self.root).iter("section"):
            head = element.find(heading)
            if element.get("class") == kind and head is not None and text(head) == title:
                return element
        raise AssertionError(f"{self.name} has no {'subsection' if parent is not None else 'section'} {title!r}")

    def titles(self, parent: ET.Element | None = None) -> list[str]:
        kind, heading = ("Ss", "h2") if parent is not None else ("Sh", "h1")
        return [
            text(head)
            for element in (parent if parent is not None else self.root).iter("section")
            if element.get("class") == kind and (head := element.find(heading)) is not None
        ]


def text(element: ET.Element) -> str:
    """The text of an element, whitespace normalised."""
    return " ".join("".join(element.itertext()).split())


def items(element: ET.Element) -> dict[str, tuple[str, str]]:
    """The tagged items (``.TP``) under ``element``: first word of the tag -> (tag, description)."""
    found: dict[str, tuple[str, str]] = {}
    for dl in element.iter("dl"):
        children = list(dl)
        for dt, dd in zip(children[::2], children[1::2], strict=True):
            assert (dt.tag, dd.tag) == ("dt", "dd"), f"unexpected {dt.tag}/{dd.tag} in a list"
            tag = text(dt)
            found[tag.split()[0]] = (tag, text(dd))
    return found


def table_rows(element: ET.Element) -> dict[str, dict[str, str]]:
    """The rows of every table (tbl) under ``element``, merged by their first cell: heading -> cell."""
    rows: dict[str, dict[str, str]] = {}
    for table in element.iter("table"):
        header, *body = [[text(cell) for cell in tr.iter("td")] for tr in table.iter("tr")]
        for cells in body:
            rows.setdefault(cells[0], {}).update(zip(header, cells, strict=True))
    return rows


def words(value: str) -> set[str]:
    """Option-like words: ``--config``, ``-h``, ``io.github.sttd.Sttd1`` (brackets and commas are not part of them)."""
    return set(re.findall(r"[\w.\-]+", value))


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint_is_clean(page: str) -> None:
    result = subprocess.run(
        [require("mandoc"), "-Tlint", "-Wall", str(MAN / page)], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("page", PAGES)
def test_groff_has_no_warnings(page: str) -> None:
    result = subprocess.run(
        [require("groff"), "-man", "-ww", "-z", str(MAN / page)], capture_output=True, text=True, timeout=30
    )
    assert result.stderr == ""


@pytest.mark.parametrize("page", PAGES)
def test_every_page_has_the_usual_sections(page: str) -> None:
    man = Page(page)
    titles = man.titles()
    for title in ("NAME", "SYNOPSIS", "DESCRIPTION", "FILES", "EXAMPLES", "SEE ALSO"):
        assert title in titles, f"{page} has no {title} section"
    assert man.section("EXAMPLES").find(".//pre") is not None, f"{page}: EXAMPLES without an example"


# --------------------------------------------------------------------------- sttd.toml(5)


def config_sections() -> Iterator[tuple[str, type[Any]]]:
    for name, kind in typing.get_type_hints(config.Config).items():
        if name == "profiles":
            continue  # [profiles.NAME]: see test_every_profile_key_is_documented
        assert isinstance(kind, type) and dataclasses.is_dataclass(kind), f"Config.{name} is not a section"
        yield name, kind


def toml_values(value: object) -> list[str]:
    """How a default may be written in TOML (basic or literal string, 10 or 10.0, ...)."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        spellings = [json.dumps(value, ensure_ascii=False)]
        if "'" not in value:
            spellings.append(f"'{value}'")
        return spellings
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, float):
        return [repr(value), str(int(value))] if value.is_integer() else [repr(value)]
    if isinstance(value, tuple):
        return [json.dumps(list(value))]
    if isinstance(value, config.Table) and not value:
        return ["{}"]
    raise AssertionError(f"no TOML spelling for {value!r}")


def test_every_config_key_is_documented_in_its_section_with_its_default() -> None:
    man = Page("sttd.toml.5")
    description = man.section("DESCRIPTION")
    assert man.titles(description) == [*(f"[{name}]" for name, _ in config_sections()), "[profiles.NAME]"], (
        "the [section] subsections differ from sttd.config.Config (or are in another order)"
    )
    for name, kind in config_sections():
        documented = items(man.section(f"[{name}]", description))
        fields = {field.name: field for field in dataclasses.fields(kind)}
        assert list(documented) == list(fields), f"[{name}]: the page has {list(documented)}, the config {list(fields)}"
        for key, field in fields.items():
            tag, description_text = documented[key]
            assert tag in [f"{key} = {spelling}" for spelling in toml_values(field.default)], (
                f"[{name}] {key}: the page says {tag!r}, the default is {field.default!r}"
            )
            assert description_text, f"[{name}] {key} has no description"


def test_every_profile_key_is_documented() -> None:
    man = Page("sttd.toml.5")
    documented = items(man.section("[profiles.NAME]", man.section("DESCRIPTION")))
    assert list(documented) == [*config.PROFILE_KEYS, *config.PROFILE_TABLES]


def test_every_choice_of_a_config_key_is_documented() -> None:
    man = Page("sttd.toml.5")
    description = man.section("DESCRIPTION")
    for name, kind in config_sections():
        documented = items(man.section(f"[{name}]", description))
        for key, hint in typing.get_type_hints(kind).items():
            if typing.get_origin(hint) is typing.Literal:
                for choice in typing.get_args(hint):
                    assert f'"{choice}"' in documented[key][1], f"[{name}] {key}: choice {choice!r} is not described"


def _takes(info: models.ModelInfo) -> str:
    fields = ["languages" if info.languages else "language"]
    fields += [name for name in ("keywords", "prompt", "delay") if getattr(info, name)]
    return ", ".join(fields)


def test_the_models_section_agrees_with_the_model_table() -> None:
    section = Page("sttd.toml.5").section("MODELS")
    rows, prose = table_rows(section), text(section)
    unknown = set(rows) - set(models.MODELS)
    assert not unknown, f"the page lists models sttd does not know: {unknown}"
    for name, info in models.MODELS.items():
        if name not in rows:
            # A snapshot may share its model's row: the text names it, and it must be alike in every respect.
            assert name in prose, f"{name} is neither in the MODELS tables nor in their text"
            assert any(dataclasses.replace(info, name=other) == models.MODELS[other] for other in rows), name
            continue
        expected = {
            "model": name,
            "text": "live" if info.live else "per turn",
            "per minute": info.price.replace(" per minute", ""),
            "shut down": info.shutdown or "-",
            "VAD": "both" if info.service_vad else "sttd",
            "takes": _takes(info),
        }
        assert rows[name] == expected, f"MODELS, {name}: the page says {rows[name]}, sttd.models {expected}"
        if info.deprecated:
            assert info.replacement in prose, f"{name}: its replacement {info.replacement} is not named"


def test_the_default_model_and_its_price_are_stated() -> None:
    man = Page("sttd.toml.5")
    tag, description = items(man.section("[realtime]", man.section("DESCRIPTION")))["model"]
    default = models.MODELS[models.DEFAULT_MODEL]
    assert tag == f'model = "{models.DEFAULT_MODEL}"'
    assert f"The default, {default.name}, costs {default.price}" in description
    assert f"The default is {default.name}" in text(man.section("MODELS"))


def test_the_privacy_trade_off_of_preroll_is_spelled_out() -> None:
    man = Page("sttd.toml.5")
    _, preroll = items(man.section("[audio]", man.section("DESCRIPTION")))["preroll_ms"]
    for phrase in ("privacy", "microphone stays open while idle", "in memory", "Nothing is sent"):
        assert phrase in preroll, f"preroll_ms does not say {phrase!r}"
    security = text(Page("sttd.1").section("SECURITY CONSIDERATIONS"))
    assert "preroll_ms" in security and "microphone stays open while idle" in security


# --------------------------------------------------------------------------- command lines


def sttd_parser(monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``sttd.cli._parse_args`` builds (the real one: this only records it on its way)."""
    builder = getattr(daemon, "_parser", None)
    if callable(builder):
        parser: argparse.ArgumentParser = builder()
        return parser
    seen: list[argparse.ArgumentParser] = []
    parse_args = argparse.ArgumentParser.parse_args

    def recording(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        seen.append(self)
        return parse_args(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", recording)
    daemon._parse_args([])
    return seen[0]


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if action.option_strings:
            yield action


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_entry(entries: dict[str, tuple[str, str]], option: str) -> tuple[str, str] | None:
    return next((entry for entry in entries.values() if option in words(entry[0])), None)


def test_every_sttd_option_and_choice_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = sttd_parser(monkeypatch)
    man = Page("sttd.1")
    synopsis, entries = words(text(man.section("SYNOPSIS"))), items(man.section("OPTIONS"))
    assert not subcommands(parser)
    for action in options(parser):
        for option in action.option_strings:
            assert option in synopsis, f"{option} is not in the SYNOPSIS of sttd(1)"
            entry = option_entry(entries, option)
            assert entry is not None, f"{option} has no entry under OPTIONS in sttd(1)"
            if action.metavar:
                assert str(action.metavar).lower() in words(entry[0]), f"{option}: {action.metavar} is not shown"
            for choice in action.choices or ():
                assert str(choice) in words(entry[1]), f"{option}: choice {choice} is not documented"


def test_every_sttctl_command_and_option_is_documented() -> None:
    parser = ctl._parser()
    man = Page("sttctl.1")
    synopsis = words(text(man.section("SYNOPSIS")))
    commands, entries = items(man.section("COMMANDS")), items(man.section("OPTIONS"))
    for action in options(parser):
        for option in action.option_strings:
            assert option in synopsis, f"{option} is not in the SYNOPSIS of sttctl(1)"
            assert option_entry(entries, option) is not None, f"{option} has no entry under OPTIONS"
    assert list(commands) == list(subcommands(parser)), "the COMMANDS of sttctl(1) differ from its parser's"
    for name, sub in subcommands(parser).items():
        assert name in synopsis, f"sttctl {name} is not in the SYNOPSIS"
        tag, description = commands[name]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.option_strings:
                for option in action.option_strings:
                    assert option in words(tag), f"sttctl {name} {option} is not in {tag!r}"
                    assert option_entry(entries, option) is not None, f"{option} has no entry under OPTIONS"
            else:
                assert f"[{action.dest}]" in tag, f"sttctl {name}: [{action.dest}] is not in {tag!r}"
                assert action.dest in words(description), f"sttctl {name}: {action.dest} is not explained"


def exit_codes(page: str) -> set[int]:
    return {int(code) for code in items(Page(page).section("EXIT STATUS")) if code.isdigit()}


def test_every_exit_status_is_documented() -> None:
    codes = {getattr(ctl, name) for name in dir(ctl) if name.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3}
    assert exit_codes("sttctl.1") == codes
    # sttd: 0 stopped by a signal or a valid --check-config, 1 could not start (SttdError), 2 usage or config.
    assert exit_codes("sttd.1") == {0, 1, 2}


def environment_variables(module_paths: list[Path]) -> set[str]:
    pattern = re.compile(r"""(?:environ(?:\.get)?\(?\[?|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")
    return {name for path in module_paths for name in pattern.findall(path.read_text())}


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    package = Path(sttd.__file__).parent
    # sttctl is ctl.py and its parts (ctl_client.py, ctl_listen.py, ...); everything else is the daemon's.
    sttctl = [p for p in package.glob("ctl*.py")]
    ctl_vars = environment_variables(sttctl)
    daemon_vars = environment_variables([p for p in package.rglob("*.py") if p not in sttctl])
    assert {"OPENAI_API_KEY", "NOTIFY_SOCKET", "JOURNAL_STREAM"} <= daemon_vars  # the scan finds them
    sttd_documented = {word for tag, _ in items(Page("sttd.1").section("ENVIRONMENT")).values() for word in words(tag)}
    assert daemon_vars <= sttd_documented, f"missing under ENVIRONMENT in sttd(1): {daemon_vars - sttd_documented}"
    sttctl_documented = set(items(Page("sttctl.1").section("ENVIRONMENT")))
    assert ctl_vars | {"DBUS_SESSION_BUS_ADDRESS"} <= sttctl_documented


def test_the_files_are_documented() -> None:
    sttd_files = set(items(Page("sttd.1").section("FILES")))
    for path in (
        "$XDG_CONFIG_HOME/sttd/config.toml",
        "$XDG_STATE_HOME/sttd/state.json",
        "~/.local/share/systemd/user/sttd.service",
        "~/.local/share/dbus-1/services/io.github.sttd.Sttd1.service",
    ):
        assert path in sttd_files, f"{path} is not under FILES in sttd(1)"
    assert "$XDG_CONFIG_HOME/sttd/config.toml" in items(Page("sttd.toml.5").section("FILES"))


# --------------------------------------------------------------------------- D-Bus


def test_every_d_bus_member_is_documented_with_its_signature() -> None:
    interface = ET.parse(INTERFACE_XML).getroot().find("interface")
    assert interface is not None
    man = Page("sttd.1")
    surface = man.section("D-BUS INTERFACE")
    methods = items(man.section("Methods", surface))
    properties = items(man.section("Properties", surface))
    signals = items(man.section("Signals", surface))
    for element in interface:
        name = element.get("name", "")
        if element.tag == "method":
            assert name in methods, f"method {name} is not under Methods"
            tag = methods[name][0]
            for arg in element.findall("arg"):
                assert arg.get("type", "?") in tag, f"{name}: {arg.get('type')} is not in {tag!r}"
                if arg.get("direction", "in") == "in":
                    assert arg.get("name", "?") in words(tag), f"{name}: argument {arg.get('name')} is not in {tag!r}"
        elif element.tag == "signal":
            assert name in signals, f"signal {name} is not under Signals"
            tag = signals[name][0]
            args = [(arg.get("type"), arg.get("name")) for arg in element.findall("arg")]
            assert re.findall(r"(\w+) (\w+)", tag.split("(", 1)[1]) == args, f"{name}: {tag!r} is not {args}"
        elif element.tag == "property":
            assert name in properties, f"property {name} is not under Properties"
            access = {"read": "read-only", "readwrite": "read-write", "write": "write-only"}[element.get("access", "")]
            tag = properties[name][0]
            assert tag == f"{name} ({element.get('type')}, {access})", f"{name}: {tag!r}"
    members = {e.get("name") for e in interface if e.tag in ("method", "signal", "property")}
    assert set(methods) | set(signals) | set(properties) == members, "the page documents members the XML lacks"


def _all_subclasses(cls: type[Any]) -> Iterator[type[Any]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_d_bus_error_is_documented() -> None:
    for module in pkgutil.walk_packages(sttd.__path__, "sttd."):
        # importing a __main__ would run it; sttd.ibus.engine runs under the system's Python (gi)
        if not module.name.endswith("__main__") and module.name != "sttd.ibus.engine":
            importlib.import_module(module.name)
    classes: list[type[Any]] = [SttdError, *_all_subclasses(SttdError)]
    names = {str(cls.dbus_name) for cls in classes}
    listed = set(re.findall(r"io\.github\.sttd\.Sttd1\.Error\.(\w+)", INTERFACE_XML.read_text()))
    assert listed, "the XML no longer lists its errors"
    man = Page("sttd.1")
    documented = items(man.section("Errors", man.section("D-BUS INTERFACE")))
    missing = (names | listed) - set(documented)
    assert not missing, f"errors missing under Errors in sttd(1): {missing}"
    assert "org.freedesktop.DBus.Error.InvalidArgs" in text(man.section("Errors", man.section("D-BUS INTERFACE")))
