"""sttd's benchmark: ``.venv/bin/python -m bench`` (see bench/README.md)."""
