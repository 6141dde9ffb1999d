"""A real HTTP server on the loopback interface, for the download tests: it serves byte strings by
path, answers Range requests (416 for a range starting at or past the end), can ignore them as some
hosts do (`ignore_range`: 200 and the whole body), and can cut a response short once to imitate a
dropped connection. It keeps the headers of every request (`headers_received`, looked up by name
regardless of case, as HTTP header names are), and answers a POST to a path it serves with that body
(an API call: Kaggle's), any other POST with `missing_status`."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"bytes=(\d+)-$")


class Handler(BaseHTTPRequestHandler):
    server: "LoopbackServer"

    def do_GET(self):
        body = self.server.files.get(self.path)
        self.server.requests.append((self.path, self.headers.get("Range")))
        self.server.headers_received.append(self.headers)
        if body is None:
            self.send_error(self.server.missing_status)
            return
        start, status = 0, 200
        requested = None if self.server.ignore_range else RANGE.match(self.headers.get("Range") or "")
        if requested:
            start, status = int(requested.group(1)), 206
            if start >= len(body):
                self.send_error(416)
                return
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        cut = self.server.cut_once.pop(self.path, None)
        self.wfile.write(payload[:cut] if cut is not None else payload)
        if cut is not None:
            self.close_connection = True

    def do_POST(self):  # an API call (Kaggle's): the body served at the path, else missing_status
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.path, None))
        self.server.headers_received.append(self.headers)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(self.server.missing_status)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0):
        super().__init__(("127.0.0.1", port), Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.headers_received: list[Message] = []  # each request's headers, in order
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before the connection drops, once
        self.missing_status = 404
        self.ignore_range = False  # True: answer a Range request with 200 and the whole body
        # a short poll: shutting down waits for the loop's next look (0.5 s by default, each test)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve_json(self, path: str, data) -> None:
        self.files[path] = json.dumps(data).encode()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    """A zip holding `entries` (name -> content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, content in entries.items():
            zipped.writestr(name, content)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
