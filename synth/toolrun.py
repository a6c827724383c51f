"""The process a tool call runs in (synth.tools): reads {target, arguments} as JSON on stdin,
calls the function, and writes {ok, content} or {ok: false, error} as the last line of
stdout. What the tool prints goes to stderr, so it cannot corrupt the reply."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any


def _no_network() -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError("tools run without network (tools.network: false)")

    socket.socket = refused  # type: ignore[assignment,misc]
    socket.create_connection = refused  # type: ignore[assignment]
    socket.getaddrinfo = refused  # type: ignore[assignment]


def _load(target: str) -> Any:
    module, _, function = target.rpartition(":")
    if module.endswith(".py"):
        path = Path(module).resolve()
        sys.path.insert(0, str(path.parent))  # its neighbours import as they would beside it
        spec = importlib.util.spec_from_file_location(f"stillhouse_tool_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    return getattr(mod, function)


def main() -> None:
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # the tool's own prints go to stderr
    sys.stdout = sys.stderr
    try:
        job = json.loads(sys.stdin.read())
        if os.environ.get("STILLHOUSE_TOOL_NO_NETWORK") == "1":
            _no_network()
        value = _load(job["target"])(**job["arguments"])
        content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        reply = {"ok": True, "content": content}
    except Exception as exc:  # the tool's error goes back to the teacher
        frames = traceback.format_exception(exc)
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": "".join(frames)[-2000:]}
    os.write(reply_fd, (json.dumps(reply, ensure_ascii=False) + "\n").encode())


if __name__ == "__main__":
    main()
