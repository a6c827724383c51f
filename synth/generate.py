"""`synth generate`: seeds through a template to the teacher, into an append-only raw log.

plan_requests() renders every request up front (so a bad seed or template fails before
any model loads) and run_generate() sends the ones the raw log does not have yet,
writing each result as it arrives. Rerunning the same recipe resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synth.backends import (
    Backend,
    Completion,
    Failure,
    load_backend_class,
    make_backend,
    make_batch_backend,
)
from synth.config import Recipe, redacted
from synth.manifest import command_line, package_versions, update_manifest
from synth.rawlog import (
    DirLock,
    JsonlAppender,
    iter_numbered_records,
    iter_records,
    repair_tail,
    repeated_request,
    rewrite_atomically,
)
from synth.reasoning import separate
from synth.requests import Request, estimate_prompt_tokens, request_id, sample_sampling
from synth.runtime import utc_now
from synth.seeds import load_seeds
from synth.templates import PromptTemplate
from synth.tools import record_calls, wire_calls
from synth.versions import claim

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """Every request the recipe asks for, in seed order, and what the teacher is."""

    requests: list[Request]
    teacher: dict[str, Any]
    duplicates: int = 0  # identical requests collapsed into one (duplicate seed rows)


def plan_requests(recipe: Recipe, teacher: dict[str, Any] | None = None) -> Plan:
    """Render all requests of a recipe. `teacher` is the backend identity (computed if None)."""
    if recipe.expand is not None and not recipe.layout.expanded.exists():
        raise ValueError(
            f"expand: the recipe expands its seeds and {recipe.layout.expanded} does not exist yet; "
            "run `synth expand RECIPE` first (`synth run RECIPE` does every stage in order)"
        )
    if teacher is None:
        teacher = load_backend_class(recipe.teacher.backend).identity_for(recipe.teacher)
    template = PromptTemplate.load(recipe.template)
    seeds = load_seeds(recipe.prompts)
    base_sampling = recipe.sampling.identity()
    conversation = None
    if recipe.driven:  # one record per conversation (synth.conversation)
        from synth.conversation import conversation_id, settings_identity

        conversation = settings_identity(recipe, teacher)
    requests: list[Request] = []
    seen: set[str] = set()
    duplicates = 0
    for row in seeds:
        messages = template.render(row.fields, where=f"{row.source} line {row.line}")
        for index in range(recipe.sampling.n):
            sampling = sample_sampling(base_sampling, index)
            rid = request_id(messages, row.fields, teacher, sampling, index)
            if conversation is not None:
                rid = conversation_id(rid, conversation)
            if rid in seen:
                duplicates += 1
                continue
            seen.add(rid)
            requests.append(
                Request(
                    id=rid,
                    messages=messages,
                    sampling=sampling,
                    sample_index=index,
                    seed=row.provenance(),
                    template=template.provenance(),
                )
            )
    if duplicates:
        logger.warning("%d requests repeat earlier ones (duplicate seed rows); each is sent once", duplicates)
    return Plan(requests=requests, teacher=teacher, duplicates=duplicates)


def make_record(result: Completion, teacher: dict[str, Any], reasoning: Any = None) -> dict[str, Any]:
    """The raw-log record of a completion (README, Record format). `reasoning` (the
    teacher's ReasoningConfig) splits a tagged reasoning trace from the answer: the assistant
    message then holds it as `reasoning_content`, as transformers' chat templates read it."""
    req = result.request
    split = separate(result.text, result.reasoning, result.finish_reason, reasoning)
    text, thought, finished = split.answer, split.reasoning, split.finished
    answer = {"role": "assistant", "content": text, **({"reasoning_content": thought} if thought is not None else {})}
    if result.tool_calls:
        answer["tool_calls"] = record_calls(wire_calls({"tool_calls": result.tool_calls}))
    return {
        "id": req.id,
        "messages": [*(_record_message(m) for m in req.messages), answer],
        **({"tools": json.dumps(req.tools, ensure_ascii=False)} if req.tools else {}),
        **({"reasoning": {"chars": len(thought), "finished": finished}} if thought is not None else {}),
        "seed": req.seed,
        "sample_index": req.sample_index,
        "teacher": {
            "backend": teacher.get("backend"),
            "model": teacher.get("model"),
            "revision": teacher.get("revision"),
            "base_url": teacher.get("base_url"),
            "fingerprint": teacher.get("fingerprint"),
        },
        "sampling": req.sampling,
        "template": req.template,
        "finish_reason": result.finish_reason,
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
        **({"logprobs": {"k": result.topk.k, "tokens": len(result.topk.token_ids)}} if result.topk is not None else {}),
        "latency_s": result.latency_s,
        **({"batch_id": result.batch_id} if result.batch_id else {}),
        **({"conversation": result.conversation} if result.conversation else {}),
        **({"tool_use": result.tool_use} if result.tool_use else {}),
        "created_at": utc_now(),
    }


def _record_message(m: dict[str, Any]) -> dict[str, Any]:
    """A history message as a record holds it: tool calls with their arguments as objects (TRL's format)."""
    if not m.get("tool_calls"):
        return m
    return {**m, "tool_calls": record_calls(wire_calls(m))}


def make_failure(result: Failure) -> dict[str, Any]:
    req = result.request
    return {
        "id": req.id,
        "seed": req.seed,
        "sample_index": req.sample_index,
        "error": {"type": result.error_type, "message": result.message, "status": result.status, **result.extra},
        "created_at": utc_now(),
    }


@dataclass
class Counts:
    requests: int = 0
    cached: int = 0  # finished by earlier runs
    generated: int = 0  # finished by this run
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    new_prompt_tokens: int = 0
    new_completion_tokens: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    logprobs_missing: int = 0  # answers written without the logprobs sampling.logprobs asked for
    logprob_tokens: int = 0  # answer tokens whose logprobs are in logprobs.bin

    @property
    def kept(self) -> int:
        return self.cached + self.generated

    @property
    def pending(self) -> int:
        return self.requests - self.kept - self.failed


class _Interrupted(Exception):
    pass


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise _Interrupted(f"signal {signum}")


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="req", desc="generate", dynamic_ncols=True, disable=not enabled, smoothing=0.1)


def _scan_raw(raw_path: Path, planned: set[str], counts: Counts) -> tuple[set[str], int]:
    """Ids in the raw log, and how many belong to other configurations; counts the cached.

    Every request is written once, so a repeated id means the log was edited or written by
    hand: an error naming both lines, before anything is sent or rewritten."""
    first_line: dict[str, int] = {}
    stale = 0
    for lineno, rec in iter_numbered_records(raw_path):
        if rec["id"] in first_line:
            raise repeated_request(raw_path, rec["id"], first_line[rec["id"]], lineno)
        first_line[rec["id"]] = lineno
        if rec["id"] not in planned:
            stale += 1
            continue
        counts.cached += 1
        _add_usage(counts, rec, new=False)
    return set(first_line), stale


def _failed_ids(fail_path: Path) -> set[str]:
    return {row["id"] for row in iter_records(fail_path)}


def dry_run(recipe: Recipe, only_failed: bool = False) -> dict[str, Any]:
    """What `run_generate` would send: request count, token estimates, cost. Sends nothing,
    writes nothing, loads no model."""
    plan = plan_requests(recipe)
    layout = recipe.layout
    counts = Counts(requests=len(plan.requests))
    done, _ = _scan_raw(layout.raw, {r.id for r in plan.requests}, counts)
    todo = [r for r in plan.requests if r.id not in done]
    if only_failed:
        failed = _failed_ids(layout.failures)
        todo = [r for r in todo if r.id in failed]
    prompt = sum(estimate_prompt_tokens(r.messages) for r in todo)
    completion = sum(int(r.sampling["max_tokens"]) for r in todo)
    return {
        "requests": counts.requests,
        "done": counts.cached,
        "to_send": len(todo),
        "prompt_tokens_estimate": prompt,
        "completion_tokens_max": completion,
        "cost_usd_max": cost_usd(recipe, prompt, completion),
        **({"cost_usd_max_sync": cost_usd(recipe, prompt, completion, sync=True)} if _batch_mode(recipe) else {}),
        "batch": _batch_mode(recipe),
        "teacher": plan.teacher,
    }


def cost_usd(recipe: Recipe, prompt_tokens: int, completion_tokens: int, sync: bool = False) -> float | None:
    """Cost at the recipe's prices per million tokens, or None when it gives none. In batch
    mode the batch price (x batch_discount) unless `sync`."""
    o = recipe.api_options
    if o is None or (o.price_input_per_mtok is None and o.price_output_per_mtok is None):
        return None
    factor = o.batch_discount if o.batch and not sync else 1.0
    return round(
        factor * (prompt_tokens * (o.price_input_per_mtok or 0) / 1e6 + completion_tokens * (o.price_output_per_mtok or 0) / 1e6), 6
    )


def run_generate(
    recipe: Recipe,
    backend: Backend | None = None,
    *,
    progress: bool = True,
    only_failed: bool = False,
    wait: bool = True,
) -> dict[str, Any]:
    """Generate every request of `recipe` that the output dir does not have yet.

    `backend` lets a caller reuse a running teacher (it must be the recipe's teacher);
    by default one is started, and only when there is work to send. `only_failed` sends
    only the requests listed in failures.jsonl. In batch mode (`teacher.openai.batch`,
    `teacher.anthropic.batch`),
    `wait=False` submits and collects the batches already finished, then returns (the
    manifest's `batches.running` names the others). Returns the manifest.
    """
    if not wait and not _batch_mode(recipe):
        raise ValueError("--no-wait: only batch mode returns before its requests are answered; "
                         "set teacher.openai.batch: true (or teacher.anthropic.batch with teacher.backend: anthropic)")
    started, wall0 = utc_now(), time.monotonic()
    layout = recipe.layout
    layout.root.mkdir(parents=True, exist_ok=True)
    with DirLock(layout.root):
        teacher = backend.identity() if backend is not None else None
        plan = plan_requests(recipe, teacher)
        teacher = plan.teacher
        claim(recipe, teacher)  # this teacher's version of the dataset (synth.versions)
        raw_path, fail_path = layout.raw, layout.failures
        for path in (raw_path, fail_path):
            repair_tail(path)

        planned = {r.id for r in plan.requests}
        counts = Counts(requests=len(plan.requests))
        done, stale = _scan_raw(raw_path, planned, counts)
        if stale:
            logger.info("%s holds %d records of other configurations (kept, not counted here)", raw_path, stale)
        todo = [r for r in plan.requests if r.id not in done]
        if only_failed:
            failed_before = _failed_ids(fail_path)
            todo = [r for r in todo if r.id in failed_before]
        logger.info(
            "%d requests: %d already in %s, %d to send", counts.requests, counts.cached, raw_path, len(todo)
        )
        layout.config.write_text(yaml.safe_dump(redacted(recipe), sort_keys=False), encoding="utf-8")
        update_manifest(layout.manifest, _manifest(recipe, plan, counts, stale, started, wall0, status="running"))

        status = "complete"
        own_backend = backend is None and bool(todo)
        driver = None  # multi-turn: the conversations around the teacher
        previous_sigterm = None
        try:
            if own_backend:
                backend = _generate_backend(recipe, wait)
            # SIGTERM (a scheduler's stop) ends the run like Ctrl-C: flush, manifest, exit.
            try:
                previous_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
            except ValueError:  # not the main thread: leave signals alone
                previous_sigterm = None
            if todo and recipe.driven:
                from synth.conversation import Conversations

                driver = Conversations(recipe, backend)
            if todo:
                with contextlib.ExitStack() as stack:
                    sinks = _Sinks(
                        stack.enter_context(JsonlAppender(raw_path, recipe.output.sync_every, recipe.output.sync_interval_s)),
                        stack.enter_context(JsonlAppender(fail_path, 1, recipe.output.sync_interval_s)),
                        stack.enter_context(_logprob_appender(recipe)) if recipe.sampling.logprobs else None,
                        getattr(backend, "vocab", None),
                    )
                    _consume(driver or backend, todo, sinks, counts, done, teacher, progress, recipe.teacher.reasoning)
        except (KeyboardInterrupt, _Interrupted):
            status = "interrupted"
            logger.warning("interrupted: finished records are saved; rerun the same command to resume")
        except Exception:
            status = "failed"
            raise
        finally:
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
            if driver is not None:
                driver.close()
            if own_backend and backend is not None:
                backend.close()
            in_flight = getattr(backend, "in_flight", set())  # batch mode: requests still running
            counts.failed = _compact_failures(fail_path, planned, done | in_flight)
            if status == "complete" and in_flight:
                status = "pending"
            manifest = _manifest(recipe, plan, counts, stale, started, wall0, status=status)
            if backend is not None and getattr(backend, "stats", None) is not None:
                manifest["teacher_stats"] = dict(backend.stats)  # retries, 429s, concurrency
            if driver is not None:
                manifest["conversations"] = dict(driver.stats)  # teacher and simulator turns sent this run
            if backend is not None and getattr(backend, "summary", None) is not None:
                manifest["batches"] = {**backend.summary, "ledger": layout.batches.name}
            update_manifest(layout.manifest, manifest)
    if status == "interrupted":
        raise KeyboardInterrupt
    return manifest


def _batch_mode(recipe: Recipe) -> bool:
    return recipe.api_options is not None and recipe.api_options.batch


def _generate_backend(recipe: Recipe, wait: bool) -> Backend:
    """The teacher for generation: batch mode's backend, or the recipe's (synth.backends)."""
    if _batch_mode(recipe):
        return make_batch_backend(recipe.teacher, recipe.layout.batches, wait=wait)
    return make_backend(recipe.teacher)


def _add_usage(counts: Counts, rec: dict[str, Any], new: bool) -> None:
    usage = rec.get("usage") or {}
    p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    counts.prompt_tokens += p
    counts.completion_tokens += c
    if new:
        counts.new_prompt_tokens += p
        counts.new_completion_tokens += c
    counts.logprob_tokens += int((rec.get("logprobs") or {}).get("tokens") or 0)
    reason = rec.get("finish_reason") or "unknown"
    counts.finish_reasons[reason] = counts.finish_reasons.get(reason, 0) + 1


@dataclass
class _Sinks:
    """Where results go: the raw log, the failure ledger, and the logprobs sidecar."""

    raw: JsonlAppender
    failures: JsonlAppender
    logprobs: Any = None  # synth.logprobs.LogprobAppender when sampling.logprobs asks for them
    vocab: bytes | None = None  # the digest of the teacher's vocabulary

    def completion(self, result: Completion, rec: dict[str, Any]) -> bool:
        """Write one answer; False when logprobs were asked for and the teacher gave none."""
        from synth.logprobs import UNKNOWN_VOCAB

        if self.logprobs is not None and result.topk is not None:
            # The logprobs first: a kill between the two writes leaves an entry that the
            # rerun's answer supersedes (the last entry of an id wins), never a record without.
            self.logprobs.append(rec["id"], rec["messages"], result.topk, self.vocab or UNKNOWN_VOCAB)
        self.raw.append(rec)
        return self.logprobs is None or result.topk is not None


def _logprob_appender(recipe: Recipe) -> Any:
    from synth.logprobs import LogprobAppender

    return LogprobAppender(recipe.layout.logprobs, recipe.output.sync_every, recipe.output.sync_interval_s)


def _consume(
    backend: Backend,
    todo: list[Request],
    sinks: _Sinks,
    counts: Counts,
    done: set[str],
    teacher: dict[str, Any],
    progress: bool,
    reasoning: Any = None,
) -> None:
    """Send `todo` through the backend, writing each result the moment it arrives."""
    t0 = time.monotonic()
    failed = 0
    extra = getattr(backend, "progress_fields", None)  # e.g. retries and 429s of API teachers
    bar = _progress(len(todo), progress)
    try:
        for result in backend.generate(iter(todo)):
            if isinstance(result, Completion):
                rec = make_record(result, teacher, reasoning)
                if not sinks.completion(result, rec):
                    counts.logprobs_missing += 1
                done.add(rec["id"])
                counts.generated += 1
                _add_usage(counts, rec, new=True)
            else:
                row = make_failure(result)
                sinks.failures.append(row)
                failed += 1
                logger.warning("request %s failed: %s: %s", row["id"], result.error_type, result.message)
            if bar.disable:
                continue
            elapsed = max(time.monotonic() - t0, 1e-9)
            fields = {
                "req/min": f"{60 * (counts.generated + failed) / elapsed:,.0f}",
                "out_tok/s": f"{counts.new_completion_tokens / elapsed:,.0f}",
                "failed": failed,
                **(extra() if extra else {}),
            }
            bar.set_postfix(fields, refresh=False)
            bar.update(1)
    finally:
        bar.close()


def _compact_failures(fail_path: Path, planned: set[str], done: set[str]) -> int:
    """Rewrite failures.jsonl as the current failures of this recipe; return their count.

    Failures are appended as they happen and a rerun retries them, so the ledger keeps the
    latest failure of each planned request that still has no record. Failures of requests
    the recipe no longer asks for (a fixed seed, changed sampling) are resolved: dropped.
    """
    if not fail_path.exists():
        return 0
    latest: dict[str, dict[str, Any]] = {}
    for row in iter_records(fail_path):
        latest[row["id"]] = row
    current = [row for rid, row in latest.items() if rid in planned and rid not in done]
    rewrite_atomically(fail_path, current)
    return len(current)


def _logprob_summary(recipe: Recipe, counts: Counts) -> dict[str, Any]:
    path = recipe.layout.logprobs
    size = path.stat().st_size if path.exists() else 0
    return {"k": recipe.sampling.logprobs, "file": path.name, "answers_without_this_run": counts.logprobs_missing,
            "answer_tokens": counts.logprob_tokens,
            "bytes_per_1k_answer_tokens": round(1000 * size / counts.logprob_tokens) if counts.logprob_tokens else None}


def _manifest(
    recipe: Recipe, plan: Plan, counts: Counts, stale: int, started: str, wall0: float, status: str
) -> dict[str, Any]:
    return {
        "stage": "generate",
        "status": status,
        "recipe": recipe.name,
        "command": command_line(),
        "started_at": started,
        "updated_at": utc_now(),
        "wall_s": round(time.monotonic() - wall0, 3),
        "teacher": plan.teacher,
        "counts": {
            "requests": counts.requests,
            "kept": counts.kept,
            "cached": counts.cached,
            "generated": counts.generated,
            "failed": counts.failed,
            "pending": counts.pending,
            "duplicate_requests": plan.duplicates,
            "records_of_other_configs": stale,
        },
        "finish_reasons": counts.finish_reasons,
        **({"logprobs": _logprob_summary(recipe, counts)} if recipe.sampling.logprobs else {}),
        "tokens": {
            "prompt": counts.prompt_tokens,
            "completion": counts.completion_tokens,
            "prompt_this_run": counts.new_prompt_tokens,
            "completion_this_run": counts.new_completion_tokens,
        },
        "cost_usd": cost_usd(recipe, counts.prompt_tokens, counts.completion_tokens),
        **({"cost_usd_sync": cost_usd(recipe, counts.prompt_tokens, counts.completion_tokens, sync=True)}
           if _batch_mode(recipe) else {}),
        "config": redacted(recipe),
        "versions": package_versions(),
        "files": {name: getattr(recipe.layout, name).name for name in ("raw", "failures", "config", "log")},
    }
