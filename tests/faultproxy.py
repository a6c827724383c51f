"""A fault-injecting HTTP proxy for OpenAI-compatible servers (tests only, 127.0.0.1).

It forwards chat completions to a real upstream server and, for requests whose last user
message carries a marker, misbehaves on purpose:

    [429]        first attempt: 429 with Retry-After: 1
    [500] [503]  first attempt: that status
    [always500]  every attempt: 500
    [reset]      first attempt: TCP reset, no response
    [hang]       first attempt: no response until the client gives up
    [badjson]    first attempt: 200 with a truncated JSON body

Attempts are counted per request body (a retry sends the same body). Every request is
logged with the proxy's own timestamps, so tests assert on what the server saw.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

MARKERS = ("always500", "429", "500", "503", "reset", "hang", "badjson")


@dataclass
class Hit:
    key: str  # hash of the request body: the same for every attempt of one request
    attempt: int
    action: str  # "forward" or a marker name
    received: float  # time.time() when the request arrived
    answered: float = 0.0  # when the response (or the reset) went out
    status: int | None = None
    body: dict = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        self.upstream_host, self.upstream_port = parsed.hostname, parsed.port
        self.upstream_prefix = parsed.path.rstrip("/")  # e.g. /v1
        self.hits: list[Hit] = []
        self.faults_enabled = True
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                proxy._handle(self)

            def do_GET(self):
                proxy._forward(self, b"", None)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # resets are on purpose
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.upstream_prefix}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    # ---- what the server saw ----

    def attempts_by_key(self) -> dict[str, list[Hit]]:
        out: dict[str, list[Hit]] = {}
        for hit in sorted(self.hits, key=lambda h: h.received):
            out.setdefault(hit.key, []).append(hit)
        return out

    @staticmethod
    def marker_of(body: dict) -> str | None:
        messages = body.get("messages") or []
        text = messages[-1].get("content", "") if messages else ""
        return next((m for m in MARKERS if f"[{m}]" in text), None)

    # ---- handling ----

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        key = hashlib.sha1(raw).hexdigest()[:12]
        with self._lock:
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        marker = self.marker_of(body) if self.faults_enabled else None
        action = marker if marker and (marker == "always500" or attempt == 1) else "forward"
        hit = Hit(key=key, attempt=attempt, action=action, received=time.time(), body=body)
        with self._lock:
            self.hits.append(hit)
        if action == "forward":
            hit.status = self._forward(h, raw, hit)
        elif action in ("429", "500", "503", "always500"):
            status = 500 if action == "always500" else int(action)
            headers = {"Retry-After": "1"} if status == 429 else {}
            hit.status = status
            self._reply(h, status, json.dumps({"error": {"message": f"injected {status}", "type": "test"}}).encode(), headers, hit)
        elif action == "badjson":
            hit.status = 200
            self._reply(h, 200, b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"mess', {}, hit)
        elif action == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            hit.answered = time.time()
            h.connection.close()
            h.close_connection = True
        elif action == "hang":
            self._stop.wait(30)  # until the client gives up and the test ends
            hit.answered = time.time()
            h.close_connection = True

    def _reply(self, h, status: int, payload: bytes, headers: dict, hit: Hit | None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()
        if hit is not None:
            hit.answered = time.time()

    def _forward(self, h, raw: bytes, hit: Hit | None) -> int:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("authorization", "content-type")}
        conn.request(h.command, h.path, body=raw or None, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        self._reply(h, resp.status, payload, {}, hit)
        return resp.status
