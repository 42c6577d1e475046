"""sttd: a speech-to-text daemon for Linux desktops."""

__version__ = "0.1.0"
