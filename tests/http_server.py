"""A small HTTP file server on 127.0.0.1 (loopback only), with Range support and ways to misbehave."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading


class FileServer:
    """Serves `files` ({url path: bytes}) on 127.0.0.1 from a background thread.

    Knobs: `cut_after` body bytes for the next `cuts` responses (then the connection is closed),
    `ignore_range` (answer 200 with the whole file), `status` ({path: HTTP error code}), `stall`
    (seconds to wait after the first body bytes), `trickle` (after the first 1000 body bytes, send
    one byte every `trickle` seconds). Every request's headers are recorded in
    `requests` and the body bytes each response sent in `sent`.
    """

    MAX_REQUESTS = 64

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.cut_after = 0
        self.cuts = 0
        self.ignore_range = False
        self.status: dict[str, int] = {}
        self.stall = 0.0
        self.trickle = 0.0
        self.no_length = False  # send no Content-Length: the body ends when the connection closes
        self.requests: list[tuple[str, dict]] = []
        self.sent: list[int] = []
        self._stop = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner._handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def serve(self, path: str, data: bytes) -> str:
        self.files[path] = data
        self.etags[path] = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        return self.url(path)

    def stop(self):
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _handle(self, h: http.server.BaseHTTPRequestHandler):
        headers = {k.lower(): v for k, v in h.headers.items()}
        self.requests.append((h.path, headers))
        if len(self.requests) > self.MAX_REQUESTS or h.path in self.status or h.path not in self.files:
            code = 503 if len(self.requests) > self.MAX_REQUESTS else self.status.get(h.path, 404)
            h.send_error(code)
            self.sent.append(0)
            return
        data, etag = self.files[h.path], self.etags[h.path]
        start, code = 0, 200
        rng = headers.get("range")
        if rng and not self.ignore_range and headers.get("if-range", etag) == etag:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                self.sent.append(0)
                return
            code = 206
        body = data[start:]
        h.send_response(code)
        if self.no_length:
            h.close_connection = True
        else:
            h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        if code == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        n = len(body)
        if self.cuts > 0:
            self.cuts -= 1
            n = min(n, self.cut_after)
            h.close_connection = True
        if self.trickle:
            h.wfile.write(body[:1000])
            h.wfile.flush()
            sent = 1000
            try:
                while sent < n and not self._stop.wait(self.trickle):
                    h.wfile.write(body[sent:sent + 1])
                    h.wfile.flush()
                    sent += 1
            except OSError:  # the client gave up
                pass
            h.close_connection = True
            self.sent.append(sent)
            return
        if self.stall:
            h.wfile.write(body[:1000])
            h.wfile.flush()
            self._stop.wait(self.stall)
            h.close_connection = True
            self.sent.append(1000)
            return
        h.wfile.write(body[:n])
        self.sent.append(n)
