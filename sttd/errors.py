"""The exceptions sttd raises on purpose.

Every error a user can cause or meet has a class here, so that each boundary
can turn it into the right shape: a config error into a message naming the
key, a D-Bus call error into ``io.github.sttd.Sttd1.Error.<name>``, a session
error into ``State=error`` with ``LastError``.
"""

from __future__ import annotations


class SttdError(Exception):
    """Base of every error sttd raises on purpose.

    ``dbus_name`` is the last component of the D-Bus error name the D-Bus
    layer replies with (``io.github.sttd.Sttd1.Error.<dbus_name>``).
    """

    dbus_name = "Failed"


class ConfigError(SttdError):
    """The configuration file is unreadable or a key has a bad value.

    The message always names the offending key (``realtime.url``) or file.
    """

    dbus_name = "InvalidConfig"


class DisabledError(SttdError):
    """``Start`` was asked for while dictation is disabled."""

    dbus_name = "Disabled"


class InvalidLanguageError(SttdError):
    """A language that is neither an ISO-639-1 code nor ``""``."""

    dbus_name = "InvalidLanguage"


class InvalidArgumentError(SttdError):
    """A D-Bus argument or property value out of range."""

    dbus_name = "InvalidArgument"


class CredentialsError(SttdError):
    """No usable API key or ephemeral token; never retried.

    Messages never contain the secret itself.
    """

    dbus_name = "Credentials"


class AudioError(SttdError):
    """The sound server or the capture source cannot be used."""

    dbus_name = "Audio"


class OutputError(SttdError):
    """A built-in output (typing, clipboard) cannot work: the message says what to install or set."""

    dbus_name = "Output"


class SessionError(SttdError):
    """The Realtime session failed.

    ``retryable`` tells the session whether another connection may succeed
    (a dropped connection, a 5xx) or not (bad credentials, a refused request).
    """

    dbus_name = "Session"

    def __init__(self, message: str, *, retryable: bool, code: str = "session") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class ProtocolError(SttdError):
    """A server event that cannot be understood (bad JSON, missing fields)."""

    dbus_name = "Protocol"


class FileError(SttdError):
    """A file sttd reads (the API key, the state, the config) is unusable.

    It is missing, unreadable, not a regular file (a FIFO, a device) or larger
    than sttd accepts. The message names the config key or the file, never
    what it holds; callers turn it into their own error (a
    :class:`CredentialsError`, a :class:`ConfigError`) or a warning.
    """

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing
        """True when the file does not exist (a source that may be absent is then skipped)."""


class StateNotSavedError(SttdError):
    """A change of persisted state (``SetLanguage``, ``Enabled``) could not be written to disk.

    The change is kept in memory for the running daemon; it is lost at restart,
    so the D-Bus call fails with this error rather than reporting success.
    """

    dbus_name = "StateNotSaved"


class ShuttingDownError(SttdError):
    """sttd is stopping (SIGTERM): it takes no new dictation."""

    dbus_name = "ShuttingDown"


class InvalidOptionError(SttdError):
    """A StartWith option that is unknown, of the wrong type or of a value sttd cannot use; the message names it."""

    dbus_name = "InvalidOption"


class NothingToUndoError(SttdError):
    """Undo with nothing sttd inserted left to take back."""

    dbus_name = "NothingToUndo"


class UserTypedError(SttdError):
    """Undo refused: the user typed after sttd's text, which would be deleted instead."""

    dbus_name = "UserTyped"
