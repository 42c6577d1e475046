"""A small Hugging Face Hub on 127.0.0.1 serving one model repository from a directory.

Enough of the Hub's HTTP API for ``huggingface_hub.snapshot_download`` (what
faster-whisper's loader calls) pointed at it with ``HF_ENDPOINT``: the
repository's revision (``GET /api/models/{repo}/revision/{rev}``), its file
tree (``GET /api/models/{repo}/tree/{rev}``) and the files
(``HEAD``/``GET /{repo}/resolve/{rev}/{file}``, with the commit, ETag and size
headers the client reads, and byte ranges). Files are sent in small chunks
with a pause between them (``chunk_delay_s``), so a download takes long
enough to show progress. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20


class HubServer:
    """Serves ``directory``'s files as the repository ``repo_id`` at one commit."""

    def __init__(self, repo_id: str, directory: Path, *, chunk_delay_s: float = 0.0) -> None:
        self.repo_id = repo_id
        self.chunk_delay_s = chunk_delay_s
        self.files = {p.name: p for p in sorted(directory.iterdir()) if p.is_file()}
        self._hashes: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def sha256(self, name: str) -> str:
        if name not in self._hashes:
            digest = hashlib.sha256()
            with self.files[name].open("rb") as file:
                for block in iter(lambda: file.read(CHUNK), b""):
                    digest.update(block)
            self._hashes[name] = digest.hexdigest()
        return self._hashes[name]

    def _tree(self) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        for name, path in self.files.items():
            size = path.stat().st_size
            entry: dict[str, object] = {"type": "file", "path": name, "size": size, "oid": self._oid(name)}
            if size > 1 << 20:
                entry["lfs"] = {"oid": self.sha256(name), "size": size, "pointerSize": 134}
            entries.append(entry)
        return entries

    def _oid(self, name: str) -> str:
        return hashlib.sha1(name.encode()).hexdigest()

    def _etag(self, name: str) -> str:
        return self.sha256(name) if self.files[name].stat().st_size > 1 << 20 else self._oid(name)

    @contextmanager
    def running(self) -> Iterator[HubServer]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _json(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _route(self) -> None:
                path = unquote(urlsplit(self.path).path)
                with hub._lock:
                    hub.requests.append((self.command, path))
                api = f"/api/models/{hub.repo_id}/"
                if path.startswith(api + "revision/"):
                    siblings = [{"rfilename": name} for name in hub.files]
                    self._json(200, {"id": hub.repo_id, "sha": COMMIT, "siblings": siblings, "private": False})
                elif path.startswith(api + "tree/"):
                    self._json(200, hub._tree())
                elif path.startswith(f"/{hub.repo_id}/resolve/"):
                    name = path.rsplit("/", 1)[-1]
                    if name not in hub.files:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self._file(name)
                else:
                    self._json(404, {"error": "Repository not found"})

            def _file(self, name: str) -> None:
                data_path = hub.files[name]
                size = data_path.stat().st_size
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=") and ranged[6:].split("-")[0].isdigit():
                    start = min(int(ranged[6:].split("-")[0]), size)
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size - start))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hub._etag(name)}"')
                if size > 1 << 20:
                    self.send_header("X-Linked-Etag", f'"{hub._etag(name)}"')
                    self.send_header("X-Linked-Size", str(size))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                with data_path.open("rb") as file:
                    file.seek(start)
                    for block in iter(lambda: file.read(CHUNK), b""):
                        self.wfile.write(block)
                        if hub.chunk_delay_s:
                            time.sleep(hub.chunk_delay_s)

            def do_GET(self) -> None:
                self._route()

            def do_HEAD(self) -> None:
                self._route()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        thread = threading.Thread(target=self._httpd.serve_forever, name="hub", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
            thread.join(10)
