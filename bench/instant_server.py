"""A local OpenAI-compatible server that answers every chat completion at once.

For benchmarks where the client must be the bottleneck. Listens on 127.0.0.1 only.

    python bench/instant_server.py PORT
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web

_ANSWER = "This is an instant answer from the benchmark server."


async def chat(request: web.Request) -> web.Response:
    body = await request.json()
    n = int(body.get("n") or 1)
    payload = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "bench"),
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": _ANSWER}, "finish_reason": "stop", "logprobs": None}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
    }
    return web.Response(text=json.dumps(payload), content_type="application/json")


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", lambda r: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
