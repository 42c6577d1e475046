"""Which window output this session gets (``[output] mode = "auto"``), and paste mode.

``auto`` picks, in order, what works in the running session:

1. ``ibus``: the sttd input method is enabled in IBus (``sttd-ibus`` owns
   ``io.github.sttd.Ibus1`` on the session bus); it shows and commits the
   text itself, the daemon only publishes it;
2. ``type:wtype``: a Wayland compositor that offers the virtual-keyboard
   protocol (``zwp_virtual_keyboard_manager_v1``: sway, Hyprland, river...;
   GNOME and KDE do not), asked directly over the Wayland socket
   (:func:`wayland_globals`), with ``wtype`` installed;
3. ``type:xdotool``: an X11 session (``DISPLAY`` without ``WAYLAND_DISPLAY``)
   with ``xdotool``;
4. ``clipboard``: otherwise, when ``wl-copy`` / ``xclip`` exists; else ``none``.

:func:`choose` says which and why (the D-Bus ``Output`` property and
``sttctl status``).

Paste mode (:class:`Paster`) puts the text on the clipboard, presses one
paste keystroke and gives the user's previous clipboard back only once the
paste has been consumed. On Wayland: save the selection (``wl-paste``),
clear it and see it empty, offer the text with ``wl-copy --foreground
--paste-once`` and see it offered, press the keys (``wtype``), wait until
that ``wl-copy`` exits (it served the one paste), then restore. Each step
waits for what it needs to see, not for a fixed delay; the one bound is
:data:`PASTE_WAIT_S` for an application that never pastes. On X11 the same
with ``xclip -loops 1`` and ``xdotool``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from .command_runner import memory_file
from .errors import OutputError

logger = logging.getLogger(__name__)

Which = Callable[[str], str | None]

VIRTUAL_KEYBOARD = "zwp_virtual_keyboard_manager_v1"
WAYLAND_PROBE_S = 1.0
"""How long the compositor may take to list its globals."""
PASTE_WAIT_S = 5.0
"""How long the focused application may take to paste before the previous clipboard is restored anyway."""
STEP_S = 3.0
"""Bound of each clipboard step (save, clear, offer, restore)."""
WTYPE_SETTLE_MS = 50
"""wtype uploads a keymap of its own; sway may drop the first key that follows at once (a race between the
keymap switch and the key, seen as a lost first character): wtype waits this long before its first key."""
PASTE_KEYS = {
    "ctrl+v": (("wtype", "-M", "ctrl", "v", "-m", "ctrl"), "ctrl+v"),
    "ctrl+shift+v": (("wtype", "-M", "ctrl", "-M", "shift", "v", "-m", "shift", "-m", "ctrl"), "ctrl+shift+v"),
    "shift+Insert": (("wtype", "-M", "shift", "-k", "Insert", "-m", "shift"), "shift+Insert"),
}
"""Per ``[output] paste_keys``: the wtype commands (after ``-s``), and xdotool's key name."""
TEXT_TYPE = "text/plain;charset=utf-8"
_SECRET_ENV = ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")
"""Not passed to the clipboard tools (the same as sttd.hooks.PRIVATE_ENV; not imported: hooks imports us)."""


# ------------------------------------------------------------------ choosing


@dataclass(frozen=True)
class Choice:
    """An output (the ``Output`` property's value) and why it was chosen."""

    output: str
    why: str


def wayland_socket(environ: Mapping[str, str]) -> str | None:
    display = environ.get("WAYLAND_DISPLAY", "")
    if not display:
        return None
    if display.startswith("/"):
        return display
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    return os.path.join(runtime, display) if runtime else None


def wayland_globals(environ: Mapping[str, str], timeout: float = WAYLAND_PROBE_S) -> frozenset[str] | None:
    """The interfaces the compositor offers (``wl_registry`` globals); None when it cannot be asked.

    A minimal Wayland client: ``wl_display.get_registry`` and ``sync``, then
    the ``global`` events up to the sync's ``done``. Blocking, bounded by ``timeout``.
    """
    path = wayland_socket(environ)
    if path is None:
        return None
    names: set[str] = set()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            # Object 1 is wl_display: get_registry (opcode 1) -> new id 2, sync (opcode 0) -> new id 3.
            sock.sendall(struct.pack("<III", 1, (12 << 16) | 1, 2) + struct.pack("<III", 1, (12 << 16) | 0, 3))
            buffer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buffer += chunk
                while len(buffer) >= 8:
                    target, word = struct.unpack_from("<II", buffer)
                    size, opcode = word >> 16, word & 0xFFFF
                    if size < 8:
                        return None
                    if len(buffer) < size:
                        break
                    body, buffer = buffer[8:size], buffer[size:]
                    if target == 2 and opcode == 0 and len(body) >= 8:  # wl_registry.global(name, interface, version)
                        length = struct.unpack_from("<I", body, 4)[0]
                        names.add(body[8 : 8 + max(length - 1, 0)].decode("utf-8", errors="replace"))
                    elif target == 3 and opcode == 0:  # wl_callback.done
                        return frozenset(names)
                    elif target == 1 and opcode == 0:  # wl_display.error
                        return None
    except OSError as exc:
        logger.debug("cannot ask the Wayland compositor at %s: %s", path, exc)
        return None


def choose_auto(
    environ: Mapping[str, str],
    ibus_active: bool,
    which: Which = shutil.which,
    probe: Callable[[Mapping[str, str]], frozenset[str] | None] = wayland_globals,
) -> Choice:
    """What ``auto`` uses in this session now (see the module)."""
    if ibus_active:
        return Choice("ibus", "the sttd input method is enabled in IBus")
    wayland, x11 = environ.get("WAYLAND_DISPLAY"), environ.get("DISPLAY")
    if wayland:
        offered = probe(environ)
        if offered is not None and VIRTUAL_KEYBOARD in offered and which("wtype"):
            return Choice("type:wtype", "the Wayland compositor offers the virtual-keyboard protocol")
        if which("wl-copy"):
            reason = "no virtual-keyboard protocol" if offered is not None else "the compositor did not answer"
            if offered is not None and VIRTUAL_KEYBOARD in offered:
                reason = "wtype is not installed"
            return Choice("clipboard", f"Wayland: {reason} and the IBus input method is not enabled")
    elif x11:
        if which("xdotool"):
            return Choice("type:xdotool", "an X11 session with xdotool")
        if which("xclip") or which("xsel"):
            return Choice("clipboard", "X11 without xdotool")
    return Choice("none", "no IBus input method, no typing tool and no clipboard tool for this session")


# ------------------------------------------------------------------ paste mode


def _tool_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in _SECRET_ENV}


async def _run(
    argv: Sequence[str], environ: Mapping[str, str], stdin: bytes = b"", timeout: float = STEP_S
) -> tuple[int | None, bytes]:
    """Run a clipboard tool to completion (killed at ``timeout``): its status (None: could not run) and stdout.

    Cancelling kills it. stderr goes to the log at DEBUG.
    """
    source = memory_file(stdin) if stdin else asyncio.subprocess.DEVNULL
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=source,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_tool_env(environ),
            start_new_session=True,
        )
    except OSError as exc:
        raise OutputError(f'output.mode = "paste": cannot run {argv[0]}: {exc.strerror or exc}') from None
    finally:
        if stdin:
            os.close(source)
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        raise
    if err.strip():
        logger.debug("%s: %s", argv[0], err.decode("utf-8", errors="replace").strip()[:300])
    return process.returncode, out


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = STEP_S) -> None:
    """Wait until the coroutine ``check()`` returns True: each answer is a real observation (a tool's reply)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise OutputError(f'output.mode = "paste": {what} did not happen within {timeout:g} s')
        await asyncio.sleep(0.02)


class Paster:
    """Paste mode's clipboard dance (see the module). One paste at a time (the hook worker is serial)."""

    def __init__(self, keys: str = "ctrl+v", which: Which = shutil.which) -> None:
        self.keys = keys
        self._which = which

    def describe(self, environ: Mapping[str, str]) -> str:
        return f"pasting with {self._tools(environ)[0]} and {self.keys}"

    def _tools(self, environ: Mapping[str, str]) -> tuple[str, str]:
        if environ.get("WAYLAND_DISPLAY"):
            missing = [t for t in ("wl-copy", "wl-paste", "wtype") if not self._which(t)]
            if missing:
                raise OutputError(f'output.mode = "paste": install {", ".join(missing)} (wl-clipboard, wtype)')
            return "wl-copy", "wtype"
        if environ.get("DISPLAY"):
            missing = [t for t in ("xclip", "xdotool") if not self._which(t)]
            if missing:
                raise OutputError(f'output.mode = "paste": install {", ".join(missing)}')
            return "xclip", "xdotool"
        raise OutputError('output.mode = "paste": WAYLAND_DISPLAY and DISPLAY are unset in sttd\'s environment')

    async def paste(self, text: str, environ: Mapping[str, str]) -> None:
        """Paste ``text`` into the focused window; the previous clipboard is back afterwards. Raises OutputError.

        Cancelling is safe: the offering tool is killed (the previous clipboard may then stay cleared).
        """
        copier, _ = self._tools(environ)
        if copier == "wl-copy":
            await self._paste_wayland(text, environ)
        else:
            await self._paste_x11(text, environ)

    async def _paste_wayland(self, text: str, environ: Mapping[str, str]) -> None:
        saved = await self._save_wayland(environ)
        await _run(("wl-copy", "--clear"), environ)
        await _until(lambda: self._wayland_empty(environ), "clearing the clipboard")
        offer = await _clipboard_tool(
            ("wl-copy", "--foreground", "--paste-once", "--type", TEXT_TYPE), environ, text.encode("utf-8")
        )
        try:

            async def offered() -> bool:
                return offer.returncode is not None or not await self._wayland_empty(environ)

            await _until(offered, "offering the text on the clipboard")
            keys = PASTE_KEYS[self.keys][0]
            status, _ = await _run(("wtype", "-s", str(WTYPE_SETTLE_MS), *keys[1:]), environ)
            if status != 0:
                raise OutputError(f'output.mode = "paste": wtype could not press {self.keys} (status {status})')
            await _until_pasted(offer)
        finally:
            await _end_offer(offer)
            await self._restore_wayland(saved, environ)

    async def _wayland_empty(self, environ: Mapping[str, str]) -> bool:
        status, out = await _run(("wl-paste", "--list-types"), environ)
        return status != 0 or not out.strip()

    async def _save_wayland(self, environ: Mapping[str, str]) -> tuple[str, bytes] | None:
        status, out = await _run(("wl-paste", "--list-types"), environ)
        types = out.decode("utf-8", errors="replace").split() if status == 0 else []
        if not types:
            return None
        kind = TEXT_TYPE if TEXT_TYPE in types else types[0]
        status, data = await _run(("wl-paste", "--no-newline", "--type", kind), environ)
        return (kind, data) if status == 0 else None

    async def _restore_wayland(self, saved: tuple[str, bytes] | None, environ: Mapping[str, str]) -> None:
        if saved is None:
            await _run(("wl-copy", "--clear"), environ)
            return
        kind, data = saved
        # wl-copy serves from a child of its own (it outlives this call, as the user's copy did).
        process = await _clipboard_tool(("wl-copy", "--type", kind), environ, data)
        await process.wait()

    async def _paste_x11(self, text: str, environ: Mapping[str, str]) -> None:
        status, saved = await _run(("xclip", "-selection", "clipboard", "-out"), environ)
        argv = ("xclip", "-selection", "clipboard", "-in", "-quiet", "-loops", "1")
        offer = await _clipboard_tool(argv, environ, text.encode("utf-8"))
        try:
            key = PASTE_KEYS[self.keys][1]
            await _run(("xdotool", "key", "--clearmodifiers", key), {**environ, "LC_ALL": "C.UTF-8"})
            await _until_pasted(offer)
        finally:
            await _end_offer(offer)
            if status == 0:
                restore = await _clipboard_tool(("xclip", "-selection", "clipboard", "-in"), environ, saved)
                await restore.wait()


async def _clipboard_tool(argv: tuple[str, ...], environ: Mapping[str, str], data: bytes) -> asyncio.subprocess.Process:
    """A clipboard tool reading ``data`` on stdin, in a session of its own (so it can be killed whole).

    The data is in an in-memory file, not a pipe: nothing waits for the tool to read it.
    """
    source = memory_file(data)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=source,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=_tool_env(environ),
            start_new_session=True,
        )
    finally:
        os.close(source)


async def _until_pasted(offer: asyncio.subprocess.Process) -> None:
    """Wait until the serve-once clipboard tool exits: the window has taken the paste (or PASTE_WAIT_S passed)."""
    try:
        async with asyncio.timeout(PASTE_WAIT_S):
            await offer.wait()
    except TimeoutError:
        logger.warning("output paste: the window did not paste within %g s; restoring the clipboard", PASTE_WAIT_S)


async def _end_offer(offer: asyncio.subprocess.Process) -> None:
    """The clipboard tool is not left serving the dictated text once the user's clipboard comes back."""
    if offer.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(offer.pid, 9)
        await offer.wait()
