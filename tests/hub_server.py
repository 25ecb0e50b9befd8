"""A loopback stand-in for the Hugging Face Hub and plain download hosts (tests never touch the network).

Serves ``HEAD``/``GET /<org>/<repo>/resolve/<revision>/<file>`` with the headers ``huggingface_hub.hf_hub_download``
needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``) and the Hub's ``X-Error-Code`` on 404s, plus
``/files/<name>`` for plain URL downloads. ``drop_after`` cuts a body short to imitate a killed download,
``trickle`` sends a body one byte at a time, ``swap_on_get`` answers GET with other bytes than HEAD announced, and
``redirects`` answers a path with a 302.

    with HubServer(repos={"org/repo": {"config.json": b"{}"}}, files={"w.bin": b"..."}) as hub:
        hub.endpoint            # http://127.0.0.1:<port>, for HF_ENDPOINT
        hub.file_url("w.bin")   # http://127.0.0.1:<port>/files/w.bin
        hub.requests            # [("GET", "/files/w.bin"), ...]
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the one commit every repo is at
REVISIONS = ("main", COMMIT)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def do_POST(self) -> None:  # noqa: N802
        self.server.owner.requests.append(("POST", self.path))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._send(403, b'{"error": "loopback Hub is read-only"}', {"Content-Type": "application/json"})

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        owner.requests.append(("GET" if body else "HEAD", path))
        if path in owner.redirects:
            return self._send(302, b"", {"Location": owner.redirects[path]}, body)
        parts = path.lstrip("/").split("/")
        if parts[0] == "files" and len(parts) > 1:
            data = owner.files.get("/".join(parts[1:]))
            if data is None:
                return self._send(404, b"not found", {}, body)
            return self._send(200, data, {"ETag": _etag(data)}, body, path)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            hub = {"X-Repo-Commit": COMMIT}
            if repo_id not in owner.repos:
                # The Hub answers 401 + RepoNotFound for unknown (or private) repos.
                return self._send(401, b"Repository not found", {"X-Error-Code": "RepoNotFound"}, body)
            if revision not in REVISIONS:
                return self._send(404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"}, body)
            data = owner.read(repo_id, filename)
            if data is None:
                return self._send(404, b"Entry not found", {**hub, "X-Error-Code": "EntryNotFound"}, body)
            etag = _etag(data)
            if body and path in owner.swap_on_get:
                data = owner.swap_on_get[path]
            return self._send(200, data, {**hub, "ETag": etag}, body, path)
        self._send(404, b"not found", {}, body)

    def _send(self, status: int, data: bytes, headers: Mapping[str, str], body: bool = True,
              path: str | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/octet-stream", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        cut = self.server.owner.drop_after.get(path) if path else None
        if body and cut is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        if cut is not None:
            # A killed transfer: the promised Content-Length never arrives and the connection closes.
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        delay = self.server.owner.trickle.get(path) if path else None
        if delay is not None:
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(delay)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: what the test wants
                self.close_connection = True
            return
        self.wfile.write(data)


def _etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HubServer


class HubServer:
    """Threaded HTTP server on ``127.0.0.1`` at a free port; a context manager.

    Args:
        repos: ``{"org/repo": {filename: bytes}}`` or ``{"org/repo": folder}`` (files read from the folder).
        files: ``{name: bytes}`` served at ``/files/<name>``.
        drop_after: ``{url path: n}``: send only the first ``n`` bytes of that path's body, then close.
        trickle: ``{url path: seconds}``: send that path's body one byte every ``seconds``.
        swap_on_get: ``{url path: bytes}``: GET of a Hub file sends these bytes (HEAD announced the repo's).
        redirects: ``{url path: location}``: answer that path with a 302 to ``location``.
    """

    def __init__(self, repos: Mapping[str, Mapping[str, bytes] | Path] | None = None,
                 files: Mapping[str, bytes] | None = None, drop_after: Mapping[str, int] | None = None,
                 trickle: Mapping[str, float] | None = None, swap_on_get: Mapping[str, bytes] | None = None,
                 redirects: Mapping[str, str] | None = None) -> None:
        self.repos = dict(repos or {})
        self.files = dict(files or {})
        self.drop_after = dict(drop_after or {})
        self.trickle = dict(trickle or {})
        self.swap_on_get = dict(swap_on_get or {})
        self.redirects = dict(redirects or {})
        self.requests: list[tuple[str, str]] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def file_url(self, name: str) -> str:
        return f"{self.endpoint}/files/{name}"

    def read(self, repo_id: str, filename: str) -> bytes | None:
        repo = self.repos[repo_id]
        if isinstance(repo, Path):
            path = repo / filename
            inside = repo.resolve() in path.resolve().parents  # no "../" escapes from the folder
            return path.read_bytes() if inside and path.is_file() else None
        return repo.get(filename)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
