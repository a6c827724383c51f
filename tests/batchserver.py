"""A local OpenAI Files + Batch API and Anthropic Messages + Message Batches server for tests
(127.0.0.1 only).

It implements the documented endpoints closely enough for the official `openai` client
(`files.create/list/content`, `batches.create/retrieve/list/cancel`) and answers each batch
line by sending its body to a real upstream server (the session's vLLM server), one line at
a time, counting how often each `custom_id` was executed: what a provider would bill.
POST /chat/completions is forwarded too, as a provider serves both modes at one base URL.
Anthropic's side (base URL `root`): POST /v1/messages goes to the upstream's /v1/messages
(vLLM serves the Messages API), and /v1/messages/batches runs each request's `params` there.
Sync faults, by marker, on the first attempt of a request: [429] (with retry-after: 1),
[529] (overloaded).

Knobs for failures a real provider produces but not on demand:

    hold_batches      an Event: while set, batches stay `in_progress` (nothing runs)
    hang_upload       an Event: while set, POST /files stores the file, then never answers
    hang_create       an Event: while set, POST /batches creates the batch, then never answers
    create_late       an Event: while set, POST /batches (either API) never answers and creates
                      its batch only after the server has answered its next listing of batches:
                      a provider that finishes a creation after the client is gone and after a
                      rerun has looked for it
    expire_after      int or None: the next batch runs this many lines, then ends `expired`
    api_key           the only key accepted; any other gets a 401
    reasoning_parser  True: chat completions come back as a server with a reasoning parser
                      gives them: `<think>R</think>A` text as reasoning_content R and content A
    [bad-request]     a line whose last message holds this marker gets a 400 error line
    [server-error]    ... a 500 error line
    [no-result]       ... appears in neither file although the batch `completed`
"""

from __future__ import annotations

import email.parser
import email.policy
import http.client
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

THINK = re.compile(r"<think>(.*?)</think>(.*)", re.S)


class BatchServer:
    def __init__(self, upstream: str, api_key: str | None = None, upstream_key: str | None = None):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port, parsed.path.rstrip("/"))
        self.api_key, self.upstream_key = api_key, upstream_key
        self.sync_calls = 0
        self.reasoning_parser = False
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.message_batches: dict[str, dict] = {}
        self.attempts: Counter = Counter()  # sync Messages calls per request body
        self.sync_bodies: list[dict] = []
        self.executed: Counter = Counter()  # custom_id -> times sent upstream (billed)
        self.uploads = 0
        self.creates = 0
        self.hold_batches = threading.Event()
        self.hang_upload = threading.Event()
        self.hang_create = threading.Event()
        self.hung = threading.Event()  # a hanging upload or creation has done its work
        self.create_late = threading.Event()
        self._listed = threading.Event()  # a listing of batches was answered
        self.expire_after: int | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._n = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj) -> None:
                self._send(status, json.dumps(obj).encode())

            def _authorised(self) -> bool:
                keys = (self.headers.get("Authorization"), f"Bearer {self.headers.get('x-api-key')}")
                if server.api_key and f"Bearer {server.api_key}" not in keys:
                    self._json(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                               "code": "invalid_api_key"}})
                    return False
                return True

            def do_GET(self):
                if not self._authorised():
                    return
                url = urlparse(self.path)
                path = url.path.removeprefix("/v1")
                if path == "/files":
                    purpose = parse_qs(url.query).get("purpose", [None])[0]
                    data = [f for f in server.files.values() if purpose in (None, f["purpose"])]
                    return self._json(200, {"object": "list", "data": data, "has_more": False})
                if m := re.fullmatch(r"/files/([\w-]+)/content", path):
                    if m[1] not in server.contents:
                        return self._json(404, {"error": {"message": f"No such File object: {m[1]}"}})
                    return self._send(200, server.contents[m[1]], "application/octet-stream")
                if path == "/messages/batches":
                    with server._lock:  # counts as one consistent snapshot
                        data = sorted(server.message_batches.values(), key=lambda b: b["id"], reverse=True)
                        payload = json.dumps({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                              "last_id": data[-1]["id"] if data else None}).encode()
                    self._send(200, payload)
                    return server._listed.set()
                if m := re.fullmatch(r"/messages/batches/([\w-]+)/results", path):
                    return self._send(200, server.contents[f"results-{m[1]}"], "application/binary")
                if m := re.fullmatch(r"/messages/batches/([\w-]+)", path):
                    return self._json(200, server.message_batches[m[1]])
                if path == "/batches":
                    data = sorted(server.batches.values(), key=lambda b: (b["created_at"], b["id"]), reverse=True)
                    self._json(200, {"object": "list", "data": data, "has_more": False,
                                     "first_id": data[0]["id"] if data else None,
                                     "last_id": data[-1]["id"] if data else None})
                    return server._listed.set()
                if m := re.fullmatch(r"/batches/([\w-]+)", path):
                    if m[1] not in server.batches:
                        return self._json(404, {"error": {"message": f"No such batch: {m[1]}"}})
                    return self._json(200, server.batches[m[1]])
                return self._json(404, {"error": {"message": f"unknown path {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self._authorised():
                    return
                path = urlparse(self.path).path.removeprefix("/v1")
                if path == "/chat/completions":
                    server.sync_calls += 1
                    status, answer = server._forward(json.loads(raw))
                    if server.reasoning_parser and status == 200:
                        message = answer["choices"][0]["message"]
                        if m := THINK.fullmatch(message["content"] or ""):
                            message["reasoning_content"], message["content"] = m[1], m[2]
                    return self._json(status, answer)
                if path == "/messages":
                    body = json.loads(raw)
                    server.sync_calls += 1
                    marker = next((m for m in ("[429]", "[529]") if m in json.dumps(body["messages"][-1])), None)
                    key = json.dumps(body, sort_keys=True)
                    server.attempts[key] += 1
                    server.sync_bodies.append(body)
                    if marker and server.attempts[key] == 1:
                        status = int(marker[1:4])
                        self.send_response(status)
                        payload = json.dumps({"type": "error", "error": {
                            "type": "rate_limit_error" if status == 429 else "overloaded_error", "message": "slow down"}}).encode()
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        if status == 429:
                            self.send_header("retry-after", "1")
                            self.send_header("anthropic-ratelimit-requests-remaining", "0")
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    return self._json(*server._forward(body, "/messages"))
                if path == "/messages/batches":
                    if server._late(lambda: server._create_messages(json.loads(raw))):
                        return
                    batch = server._create_messages(json.loads(raw))
                    if server.hang_create.is_set():
                        server.hung.set()
                        server._release.wait(120)
                        return
                    return self._json(200, batch)
                if path == "/files":
                    uploaded = server._upload(self.headers.get("Content-Type"), raw)
                    if server.hang_upload.is_set():
                        server.hung.set()
                        server._release.wait(120)  # the client is killed meanwhile
                        return
                    return self._json(200, uploaded)
                if path == "/batches":
                    if server._late(lambda: server._create(json.loads(raw))):
                        return
                    batch = server._create(json.loads(raw))
                    if server.hang_create.is_set():
                        server.hung.set()
                        server._release.wait(120)
                        return
                    return self._json(200, batch)
                if m := re.fullmatch(r"/batches/([\w-]+)/cancel", path):
                    batch = server.batches[m[1]]
                    batch["status"] = "cancelling"
                    return self._json(200, batch)
                return self._json(404, {"error": {"message": f"unknown path {self.path}"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.root}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _id(self, prefix: str) -> str:
        with self._lock:
            self._n += 1
            return f"{prefix}-{self._n:04d}"

    def _upload(self, ctype: str, raw: bytes) -> dict:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in msg.iter_parts()}
        content = fields["file"].get_payload(decode=True)
        file_id = self._id("file")
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                               "filename": fields["file"].get_filename(), "purpose": fields["purpose"].get_content().strip(),
                               "status": "processed"}
        self.contents[file_id] = content
        self.uploads += 1
        return self.files[file_id]

    def _create(self, body: dict) -> dict:
        batch_id = self._id("batch")
        now = int(time.time())
        lines = [json.loads(x) for x in self.contents[body["input_file_id"]].decode().split("\n") if x.strip()]
        batch = {"id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                 "completion_window": body["completion_window"], "status": "in_progress", "created_at": now,
                 "in_progress_at": now, "metadata": body.get("metadata"), "errors": None,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        self.batches[batch_id] = batch
        self.creates += 1
        limit, self.expire_after = self.expire_after, None
        threading.Thread(target=self._run, args=(batch, lines, limit), daemon=True).start()
        return batch

    def _run(self, batch: dict, lines: list[dict], limit: int | None) -> None:
        while self.hold_batches.is_set():
            time.sleep(0.05)
        out, err = [], []
        for n, line in enumerate(lines):
            if limit is not None and n >= limit:
                break
            cid, body = line["custom_id"], line["body"]
            text = json.dumps(body["messages"][-1])
            if "[no-result]" in text:
                continue
            if "[bad-request]" in text:
                err.append({"id": f"req-{cid}", "custom_id": cid, "response": {"status_code": 400, "request_id": cid, "body": {
                    "error": {"message": "Invalid value for 'max_tokens'.", "type": "invalid_request_error", "code": None}}},
                    "error": None})
                batch["request_counts"]["failed"] += 1
                continue
            if "[server-error]" in text:
                err.append({"id": f"req-{cid}", "custom_id": cid, "response": {"status_code": 500, "request_id": cid,
                            "body": {"error": {"message": "The server had an error processing your request."}}}, "error": None})
                batch["request_counts"]["failed"] += 1
                continue
            status, answer = self._forward(body)
            self.executed[cid] += 1
            out.append({"id": f"req-{cid}", "custom_id": cid, "response": {"status_code": status, "request_id": cid, "body": answer},
                        "error": None})
            batch["request_counts"]["completed"] += 1
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = self._id("file")
                self.contents[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(self.contents[file_id]),
                                       "created_at": int(time.time()), "filename": f"{batch['id']}_{name}.jsonl",
                                       "purpose": "batch_output", "status": "processed"}
                batch[name] = file_id
        now = int(time.time())
        if limit is not None and limit < len(lines):
            batch.update(status="expired", expired_at=now)
        else:
            batch.update(status="completed", completed_at=now)

    def _create_messages(self, body: dict) -> dict:
        batch_id = self._id("msgbatch")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        requests = body["requests"]
        batch = {"id": batch_id, "type": "message_batch", "processing_status": "in_progress", "created_at": now,
                 "expires_at": now, "ended_at": None, "cancel_initiated_at": None, "archived_at": None, "results_url": None,
                 "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}}
        self.message_batches[batch_id] = batch
        self.creates += 1
        limit, self.expire_after = self.expire_after, None
        threading.Thread(target=self._run_messages, args=(batch, requests, limit), daemon=True).start()
        return batch

    def _run_messages(self, batch: dict, requests: list[dict], limit: int | None) -> None:
        while self.hold_batches.is_set():
            time.sleep(0.05)
        rows, counts = [], batch["request_counts"]
        for n, item in enumerate(requests):
            cid, params = item["custom_id"], item["params"]
            text = json.dumps(params["messages"][-1])
            if limit is not None and n >= limit:
                rows.append({"custom_id": cid, "result": {"type": "expired"}})
                outcome = "expired"
            elif "[no-result]" in text:
                outcome = "succeeded"  # counted, but left out of the results (a provider bug)
            elif "[bad-request]" in text:
                rows.append({"custom_id": cid, "result": {"type": "errored", "error": {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "max_tokens: must be at most 8192"}}}})
                outcome = "errored"
            else:
                status, answer = self._forward(params, "/messages")
                self.executed[cid] += 1
                outcome = "succeeded" if status == 200 else "errored"
                rows.append({"custom_id": cid, "result": {"type": outcome, **(
                    {"message": answer} if status == 200 else {"error": answer})}})
            with self._lock:  # a listing never sees a request counted twice or not at all
                counts["processing"] -= 1
                counts[outcome] += 1
        self.contents[f"results-{batch['id']}"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
        batch.update(processing_status="ended", ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     results_url=f"{self.root}/v1/messages/batches/{batch['id']}/results")

    def _forward(self, body: dict, path: str = "/chat/completions") -> tuple[int, dict]:
        host, port, prefix = self.upstream
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            headers = {"Content-Type": "application/json"}
            if self.upstream_key:
                headers["Authorization"] = f"Bearer {self.upstream_key}"
            conn.request("POST", f"{prefix}{path}", body=json.dumps(body), headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def _late(self, create) -> bool:
        """With create_late set: the client waits in vain, then is killed (the test's `hung`);
        the batch is created once the next listing has been answered. False otherwise."""
        if not self.create_late.is_set():
            return False
        self._listed.clear()
        self.hung.set()
        if self._listed.wait(120):
            create()
        return True

    def release(self) -> None:
        """Let a hanging batch creation finish (its client is gone)."""
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
