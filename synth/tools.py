"""Tool calls (docs/distillation.md): the recipe's tools, the teacher's calls, and running them.

The teacher sees the tools (OpenAI's format) on every call: an API teacher as the request's
`tools`, the in-process engine through its chat template's tools support. Its calls come
back as `tool_calls` (from the API, or parsed here from the Hermes-style
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` text an in-process model writes).
Each call is checked (a known tool, arguments that are a JSON object valid for the tool's
schema) and run by the Python function the recipe names for it, in a process of its own
with a timeout, an address-space limit and no network; what it returns, or the error, goes
back to the teacher as a `tool` message. Nothing a tool does can take the run down: a
crash, a hang or an exception is a tool error the `tools` filter can reject.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import yaml

from synth.runtime import canonical_json, file_sha256

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
ERROR_KINDS = ("unknown_tool", "invalid_arguments", "tool_error", "timeout")


def load_definitions(definitions: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    """The tool definitions of `tools.definitions` (a list, or a JSON/YAML file holding one), checked."""
    where = "tools.definitions"
    if isinstance(definitions, str):
        path = Path(definitions)
        if not path.is_file():
            raise ValueError(f"{where}: {path} does not exist")

        try:  # YAML is a superset of JSON: one loader reads both
            definitions = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"{where}: {path} is not valid JSON or YAML: {exc}") from None
        where = f"{where}: {path}"
    if not isinstance(definitions, list) or not definitions:
        raise ValueError(f"{where}: give a non-empty list of tools, each {{type: function, function: {{name, description, parameters}}}}")
    names: set[str] = set()
    for i, tool in enumerate(definitions):
        at = f"{where}[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise ValueError(f"{at}: a tool is {{type: function, function: {{name, description, parameters}}}} (OpenAI's format)")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{at}.function.name: letters, digits, _ and -, at most 64, got {name!r}")
        if name in names:
            raise ValueError(f"{at}.function.name: '{name}' is defined twice")
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise ValueError(f"{at}.function.parameters: a JSON schema of type object (the call's keyword arguments)")
        try:
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError
        except ImportError:
            raise ImportError("tools: schema checks need jsonschema: pip install 'stillhouse[curate]'") from None
        try:
            Draft202012Validator.check_schema(params)
        except SchemaError as exc:
            raise ValueError(f"{at}.function.parameters: not a valid JSON schema: {exc.message}") from None
    return definitions


def _function_file(target: str, where: str) -> Path:
    """The source file of 'path/to/file.py:function' or 'package.module:function'."""
    module, sep, function = target.rpartition(":")
    if not sep or not module or not function.isidentifier():
        raise ValueError(f"{where}: give 'path/to/file.py:function' or 'package.module:function', got {target!r}")
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ValueError(f"{where}: {path} does not exist")
        return path
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ValueError(f"{where}: module '{module}' is not importable from here (or give its file: path/to/file.py:{function})")
    return Path(spec.origin)


def check_tools(cfg: Any) -> None:
    """Validate a ToolsConfig: its definitions, and one function for each tool."""
    names = [t["function"]["name"] for t in load_definitions(cfg.definitions)]
    missing = [n for n in names if n not in cfg.functions]
    if missing:
        raise ValueError(f"functions: no function runs the tool(s) {', '.join(missing)}; add e.g. "
                         f"{missing[0]}: path/to/tools.py:{missing[0]}")
    extra = sorted(set(cfg.functions) - set(names))
    if extra:
        raise ValueError(f"functions: {', '.join(extra)} is not among the tools in definitions ({', '.join(names)})")
    for name, target in cfg.functions.items():
        _function_file(target, f"functions.{name}")


@cache
def _network_namespace() -> bool:
    """Whether this kernel lets an unprivileged process enter a network namespace of its own."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Call:
    """One tool call of the teacher, in OpenAI's wire format (arguments as JSON text)."""

    id: str
    name: str
    arguments: str

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Result:
    """What a call gave back: the tool message's content, and the error kind if it failed."""

    content: str
    error: str | None = None  # one of ERROR_KINDS


def parse_calls(text: str, request_id: str) -> tuple[str, list[Call]]:
    """The text before the first `<tool_call>` and the calls in Hermes-style text. Text with
    a call that is not a JSON object with a name and arguments is left whole, with no calls
    (as vLLM's hermes parser does): the `tools` filter finds the markup in the answer."""
    if CALL_OPEN not in text:
        return text, []
    calls = []
    for i, match in enumerate(_CALL.finditer(text)):
        raw = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
        try:
            obj = json.loads(raw)
        except ValueError:
            return text, []
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return text, []
        arguments = obj.get("arguments", {})
        calls.append(Call(call_id(request_id, i), obj["name"],
                          arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)))
    return text[: text.find(CALL_OPEN)].strip(), calls


def parse_required(text: str, request_id: str) -> list[Call]:
    """The calls of an answer constrained by required_schema (a JSON array of {name, arguments})."""
    try:
        items = json.loads(text)
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    return [Call(call_id(request_id, i), item["name"], json.dumps(item.get("arguments", {}), ensure_ascii=False))
            for i, item in enumerate(items) if isinstance(item, dict) and isinstance(item.get("name"), str)]


def call_id(request_id: str, index: int) -> str:
    return "call_" + hashlib.sha256(f"{request_id}:{index}".encode()).hexdigest()[:24]


def required_schema(definitions: list[dict[str, Any]], parallel: bool = True) -> dict[str, Any]:
    """A JSON schema of one or more calls (one without `parallel`) of the given tools, for
    tool_choice: required on an in-process engine (as vLLM's server builds for the API)."""
    return {"type": "array", "minItems": 1, **({} if parallel else {"maxItems": 1}), "items": {"anyOf": [
        {"type": "object", "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                                          "arguments": t["function"].get("parameters", {"type": "object"})},
         "required": ["name", "arguments"]} for t in definitions]}}


def wire_calls(message: dict[str, Any]) -> list[Call]:
    """The calls of an assistant message (a record's, arguments as objects, or the wire's)."""
    calls = []
    for i, tc in enumerate(message.get("tool_calls") or []):
        fn = tc.get("function") or {}
        args = fn.get("arguments")
        calls.append(Call(tc.get("id") or f"call_{i}", str(fn.get("name")),
                          args if isinstance(args, str) else json.dumps(args if args is not None else {}, ensure_ascii=False)))
    return calls


def record_calls(calls: list[Call]) -> list[dict[str, Any]]:
    """Calls as a record holds them (TRL's format): arguments as an object where they parse as one."""
    out = []
    for c in calls:
        try:
            args: Any = json.loads(c.arguments)
        except ValueError:
            args = c.arguments
        out.append({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}})
    return out


class Toolbox:
    """The recipe's tools: what the teacher is shown, and running its calls."""

    def __init__(self, cfg: Any, python: str | None = None):
        self.cfg = cfg
        self.definitions = load_definitions(cfg.definitions)
        self.schemas = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in self.definitions}
        self.files = {name: _function_file(target, f"tools.functions.{name}") for name, target in cfg.functions.items()}
        self.python = python or sys.executable
        c = cfg  # the functions' sources hashed once: every call's cache key holds them
        self._identity = {
            "definitions": self.definitions, "choice": c.choice, "first_choice": c.first_choice, "parallel": c.parallel,
            "max_rounds": c.max_rounds, "timeout_s": c.timeout_s, "memory_mb": c.memory_mb, "network": c.network,
            "functions": {n: {"target": t, "source": file_sha256(self.files[n])} for n, t in sorted(c.functions.items())}}

    @cached_property
    def sandbox(self) -> str:
        """How tools are kept off the network; probed when tools first run (planning never does)."""
        if self.cfg.network:
            return "none"
        if _network_namespace():
            return "network namespace"
        logger.warning("tools: this kernel refuses an unprivileged network namespace; tools run with Python's "
                       "sockets disabled instead (a tool calling a C library's network code is not stopped)")
        return "sockets disabled"

    def identity(self) -> dict[str, Any]:
        """What the tools' results depend on (in every record id of a recipe with tools)."""
        return self._identity

    def choice(self, round_: int) -> str:
        return self.cfg.first_choice if round_ == 1 and self.cfg.first_choice else self.cfg.choice

    def result_key(self, call: Call, turn_request_id: str, index: int) -> str:
        """A call's cache key: the teacher call that made it, its place, and the function's source."""
        function = self._identity["functions"].get(call.name)
        payload = {"turn": turn_request_id, "index": index, "name": call.name, "arguments": call.arguments,
                   "source": function["source"] if function else None, "tools": self._identity}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]

    def check(self, call: Call) -> tuple[dict[str, Any] | None, Result | None]:
        """(the arguments, None) for a valid call, else (None, the error fed back)."""
        if call.name not in self.schemas:
            return None, Result(json.dumps({"error": f"unknown tool '{call.name}'; the tools are {', '.join(self.schemas)}"}),
                                "unknown_tool")
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError as exc:
            return None, Result(json.dumps({"error": f"arguments are not JSON: {exc}"}), "invalid_arguments")
        if not isinstance(args, dict):
            return None, Result(json.dumps({"error": "arguments must be a JSON object"}), "invalid_arguments")
        from jsonschema import Draft202012Validator

        errors = sorted(Draft202012Validator(self.schemas[call.name]).iter_errors(args), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "arguments"
            return None, Result(json.dumps({"error": f"invalid arguments for {call.name}: {where}: {errors[0].message}"}),
                                "invalid_arguments")
        return args, None

    def run(self, calls: list[Call], on_result: Callable[[int, Result], None] | None = None) -> list[Result]:
        """Every call's result, in order; valid calls run at once, up to tools.workers.
        `on_result(index, result)` is called as each one finishes (to record it at once)."""
        checked = [self.check(c) for c in calls]
        results: list[Result | None] = [error for _, error in checked]
        with ThreadPoolExecutor(max_workers=self.cfg.workers) as pool:
            futures = {pool.submit(self._execute, c.name, args): i
                       for i, (c, (args, error)) in enumerate(zip(calls, checked, strict=True)) if error is None}
            if on_result is not None:
                for i, result in enumerate(results):
                    if result is not None:
                        on_result(i, result)
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_result is not None:
                    on_result(futures[future], results[futures[future]])
        return results  # type: ignore[return-value]

    def _execute(self, name: str, args: dict[str, Any]) -> Result:
        cfg = self.cfg
        cmd = [self.python, "-m", "synth.toolrun"]
        if self.sandbox == "network namespace":
            cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
        env = {**os.environ, "STILLHOUSE_TOOL_NO_NETWORK": "0" if cfg.network else "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parent.parent),
                                                           os.environ.get("PYTHONPATH")) if p)}
        for secret in [k for k in env if k.endswith(("_API_KEY", "_TOKEN", "_SECRET"))]:
            env.pop(secret)  # a tool sees no teacher key
        limit = cfg.memory_mb * 2**20

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        job = json.dumps({"target": cfg.functions[name], "arguments": args})
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=True, preexec_fn=limits)
        try:
            out, err = proc.communicate(job.encode(), timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Result(json.dumps({"error": f"{name} did not finish within {cfg.timeout_s:g} s"}), "timeout")
        last = out.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        try:
            reply = json.loads(last[0])
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
            tail = err.decode("utf-8", "replace").strip()[-300:]
            return Result(json.dumps({"error": f"{name} crashed ({how})" + (f": {tail}" if tail else "")}), "tool_error")
        if not reply.get("ok"):
            return Result(json.dumps({"error": str(reply.get("error"))[:1000]}), "tool_error")
        return Result(reply["content"])
