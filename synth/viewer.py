"""`synth view OUTPUT`: the audit page, served on 127.0.0.1 from the audit index (synth.audit).

A small JSON API over the index and three static files (synth/static/). Everything the page
shows from a run is set as text in the browser (textContent), never as markup, and the page
forbids inline scripts (Content-Security-Policy), so teacher output that contains `<script>`
is shown, not run. It answers only requests whose Host header names this machine (an IP
address, localhost, the address it listens on, this host's name, or one given with
`allow_hosts`), as Jupyter does: a web page elsewhere that points its own domain at 127.0.0.1
(DNS rebinding) gets 403, not the records.

    GET /api/summary           the funnel, counts by stage, filter and PII type, students' evaluations, the diff, the students compared
    GET /api/records?...       one page of records: stage, filter, pii, seed (line or file), q (text or id), page, per
    GET /api/record?rowid=N    one record in full, its provenance, and the students' answers to its prompt
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import sqlite3
import threading
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from synth.audit import build, read_record
from synth.layout import Layout

logger = logging.getLogger(__name__)

STATIC = {"/": ("audit.html", "text/html"), "/audit.js": ("audit.js", "text/javascript"),
          "/audit.css": ("audit.css", "text/css")}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
MAX_PER_PAGE = 200
_HEX = re.compile(r"[0-9a-f]{6,64}")


class Audit:
    """The queries behind the page, over one run's audit index."""

    def __init__(self, root: Path, progress: bool = True):
        self.layout = Layout(root)
        self.index = build(self.layout, progress)
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.index}?mode=ro", uri=True)
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    def _json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @cached_property
    def students(self) -> list[dict[str, Any]]:
        """Each evaluated student of the run (OUTPUT/*/eval_report.json): metrics and samples."""
        out = []
        for report in sorted(self.layout.root.glob("*/eval_report.json")):
            data = self._json(report) or {}
            out.append({"name": report.parent.name, "samples": data.get("samples") or [],
                        "metrics": {k: v for k, v in data.items() if k != "samples"}})
        return out

    def summary(self) -> dict[str, Any]:
        db = self.db
        manifest = self._json(self.layout.manifest) or {}
        stats = self._json(self.layout.stats) or {}
        pii: dict[str, int] = {}
        for (value,) in db.execute("SELECT pii FROM records WHERE pii IS NOT NULL"):
            for k, v in json.loads(value).items():
                pii[k] = pii.get(k, 0) + v
        diff = self.layout.diff.read_text(encoding="utf-8") if self.layout.diff.exists() else None
        compare = self.layout.compare.read_text(encoding="utf-8") if self.layout.compare.exists() else None
        return {
            "run": str(self.layout.root),
            "teacher": manifest.get("teacher"),
            "generate": {"counts": manifest.get("counts"), "finish_reasons": manifest.get("finish_reasons")},
            "funnel": (manifest.get("curate") or {}).get("funnel") or [],
            "stats": stats,
            "total": db.execute("SELECT count(*) FROM records").fetchone()[0],
            "stages": dict(db.execute("SELECT stage, count(*) FROM records GROUP BY stage ORDER BY count(*) DESC").fetchall()),
            "filters": dict(db.execute("SELECT filter, count(*) FROM records WHERE filter IS NOT NULL GROUP BY filter "
                                       "ORDER BY count(*) DESC").fetchall()),
            "pii": dict(sorted(pii.items())),
            "seeds": [r[0] for r in db.execute("SELECT DISTINCT seed_source FROM records WHERE seed_source IS NOT NULL LIMIT 50")],
            "students": [{"name": s["name"], "metrics": s["metrics"], "samples": s["samples"][:20]} for s in self.students],
            "diff": diff,
            "compare": compare,
        }

    def records(self, params: dict[str, str]) -> dict[str, Any]:
        where, args = [], []
        for key in ("stage", "filter"):
            if params.get(key):
                where.append(f"{key} = ?")
                args.append(params[key])
        if params.get("pii"):
            where.append("pii_types LIKE ?")
            args.append(f"%,{params['pii']},%")
        seed = (params.get("seed") or "").strip()
        if seed:
            if seed.isdigit():
                where.append("seed_line = ?")
                args.append(int(seed))
            else:
                where.append("seed_source LIKE ?")
                args.append(f"%{seed}%")
        q = (params.get("q") or "").strip()
        if q:
            phrase = '"' + q.replace('"', '""') + '"'  # the words in this order: no FTS syntax from the box
            if _HEX.fullmatch(q.lower()):
                where.append("(id LIKE ? OR rowid IN (SELECT rowid FROM texts WHERE texts MATCH ?))")
                args += [q.lower() + "%", phrase]
            else:
                where.append("rowid IN (SELECT rowid FROM texts WHERE texts MATCH ?)")
                args.append(phrase)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        per = max(1, min(MAX_PER_PAGE, int(params.get("per") or 50)))
        page = max(0, int(params.get("page") or 0))
        total = self.db.execute(f"SELECT count(*) FROM records{clause}", args).fetchone()[0]
        rows = self.db.execute(
            f"SELECT rowid, id, stage, filter, reason, pii, seed_source, seed_line, prompt FROM records{clause} "
            "ORDER BY rowid LIMIT ? OFFSET ?", [*args, per, page * per]).fetchall()
        return {"total": total, "page": page, "per": per,
                "rows": [{**dict(r), "pii": json.loads(r["pii"]) if r["pii"] else None} for r in rows]}

    def record(self, rowid: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM records WHERE rowid = ?", (rowid,)).fetchone()
        if row is None:
            return None
        rec = read_record(self.layout, row)
        prompt = row["prompt"]
        full_prompt = next((m.get("content") for m in reversed(rec.get("messages") or []) if m.get("role") == "user"), None)
        students = [{"student": s["name"], **sample} for s in self.students for sample in s["samples"]
                    if sample.get("prompt") in (full_prompt, prompt)]
        return {"row": {k: row[k] for k in row.keys() if k not in ("offset", "length")},
                "pii": json.loads(row["pii"]) if row["pii"] else None, "record": rec, "students": students}


def host_name(header: str) -> str:
    """The name in a Host header, without its port and brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8765
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    """True when a request's Host header names this machine: an IP address (DNS rebinding needs a
    domain name), or one of `allowed`."""
    if not header:
        return False
    name = host_name(header)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name.rstrip(".") in allowed


def local_names(host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The host names a server bound to `host` answers to."""
    names = {"localhost", host.lower(), *(e.lower() for e in extra)}
    if host in ("", "0.0.0.0", "::"):  # every interface: this machine's own names too
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(n for n in names if n)


def make_handler(audit: Audit, allowed: frozenset[str] = frozenset({"localhost"})) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "stillhouse-view"

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", f"{ctype}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for k, v in HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, data: Any, status: int = 200) -> None:
            self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if not host_allowed(self.headers.get("Host"), allowed):
                logger.warning("synth view: refused a request for Host %r (not this machine's name; a web page using "
                               "DNS rebinding looks like this); serve with --allow-host NAME to accept a name",
                               (self.headers.get("Host") or "")[:100])
                self._json({"error": "host not allowed"}, HTTPStatus.FORBIDDEN)
                return
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                if url.path in STATIC:
                    name, ctype = STATIC[url.path]
                    self._send(200, resources.files("synth.static").joinpath(name).read_bytes(), ctype)
                elif url.path == "/api/summary":
                    self._json(audit.summary())
                elif url.path == "/api/records":
                    self._json(audit.records(params))
                elif url.path == "/api/record":
                    found = audit.record(int(params.get("rowid", "-1")))
                    self._json(found if found else {"error": "no such record"}, 200 if found else 404)
                else:
                    self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            except ValueError as exc:
                self._json({"error": f"bad request: {exc}"}, HTTPStatus.BAD_REQUEST)
            except sqlite3.OperationalError as exc:
                self._json({"error": f"query failed: {exc}"}, HTTPStatus.BAD_REQUEST)

    return Handler


def serve(root: Path, host: str = "127.0.0.1", port: int = 8765, progress: bool = True,
          allow_hosts: tuple[str, ...] = ()) -> ThreadingHTTPServer:
    """Build (or reuse) the run's audit index and return a server for its page (not started).
    It answers requests whose Host is an IP address, localhost, `host`, or one of `allow_hosts`."""
    audit = Audit(root, progress)
    server = ThreadingHTTPServer((host, port), make_handler(audit, local_names(host, allow_hosts)))
    server.daemon_threads = True
    return server
