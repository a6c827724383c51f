"""`synth generate`: seeds through a template to the teacher, into an append-only raw log.

The plan (synth.plan) renders every request up front, so a bad seed or template fails
before any model loads; `run_generate` sends the ones the raw log does not have yet, writing
each result as it arrives. Rerunning the same recipe resumes. The Generate stage is keyed
item by item: every request's id is its key, and the raw log is the cache.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synth.backends import Backend, Completion, make_backend, make_batch_backend
from synth.config import Recipe, redacted
from synth.conversation import Conversations
from synth.logprobs import UNKNOWN_VOCAB, LogprobAppender
from synth.manifest import command_line, package_versions, update_manifest
from synth.plan import Plan
from synth.rawlog import (
    DirLock,
    JsonlAppender,
    iter_numbered_records,
    iter_records,
    repair_tail,
    repeated_request,
    rewrite_atomically,
)
from synth.records import make_failure, make_record
from synth.requests import Request, estimate_prompt_tokens
from synth.runtime import progress_bar, utc_now
from synth.stage import Stage, StageResult
from synth.versions import claim

logger = logging.getLogger(__name__)


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


def dry_run(plan: Plan, only_failed: bool = False) -> dict[str, Any]:
    """What `run_generate` would send: request count, token estimates, cost. Sends nothing,
    writes nothing, loads no model."""
    recipe, layout, requests = plan.recipe, plan.layout, plan.requests.requests
    counts = Counts(requests=len(requests))
    done, _ = _scan_raw(layout.raw, plan.request_ids, counts)
    todo = [r for r in requests if r.id not in done]
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
        **({"cost_usd_max_sync": cost_usd(recipe, prompt, completion, sync=True)} if plan.batch_mode else {}),
        "batch": plan.batch_mode,
        "teacher": plan.teacher,
    }


def cost_usd(recipe: Recipe, prompt_tokens: int, completion_tokens: int, sync: bool = False) -> float | None:
    """Cost at the recipe's prices per million tokens, or None when it gives none. In batch
    mode the batch price (x batch_discount) unless `sync`."""
    o = recipe.api_options
    if o is None or (o.price_input_per_mtok is None and o.price_output_per_mtok is None):
        return None
    factor = o.batch_discount if o.batch and not sync else 1.0
    per_token = prompt_tokens * (o.price_input_per_mtok or 0) + completion_tokens * (o.price_output_per_mtok or 0)
    return round(factor * per_token / 1e6, 6)


def run_generate(plan: Plan, backend: Backend | None = None, *, progress: bool = True, only_failed: bool = False,
                 wait: bool = True) -> dict[str, Any]:
    """Generate every request of the plan that the output dir does not have yet.

    `backend` lets a caller reuse a running teacher (it must be the recipe's teacher);
    by default one is started, and only when there is work to send. `only_failed` sends
    only the requests listed in failures.jsonl. In batch mode (`teacher.openai.batch`,
    `teacher.anthropic.batch`), `wait=False` submits and collects the batches already
    finished, then returns (the manifest's `batches.running` names the others). Returns the
    manifest.
    """
    if not wait and not plan.batch_mode:
        raise ValueError("--no-wait: only batch mode returns before its requests are answered; "
                         "set teacher.openai.batch: true (or teacher.anthropic.batch with teacher.backend: anthropic)")
    if backend is not None:
        plan.known_teacher(backend.identity())
    plan.layout.root.mkdir(parents=True, exist_ok=True)
    with DirLock(plan.layout.root):
        run = _GenerateRun(plan, only_failed)
        return run.send(backend, progress, wait)


class _GenerateRun:
    """One `synth generate`: what is done, what is left, and the files it writes."""

    def __init__(self, plan: Plan, only_failed: bool):
        self.plan, self.recipe, self.layout = plan, plan.recipe, plan.layout
        self.started, self.wall0 = utc_now(), time.monotonic()
        requests = plan.requests.requests
        claim(self.layout.root, plan.teacher, self.recipe.output.version_by_teacher)  # (synth.versions)
        for path in (self.layout.raw, self.layout.failures):
            repair_tail(path)
        self.counts = Counts(requests=len(requests))
        self.done, self.stale = _scan_raw(self.layout.raw, plan.request_ids, self.counts)
        if self.stale:
            logger.info("%s holds %d records of other configurations (kept, not counted here)", self.layout.raw,
                        self.stale)
        self.todo = [r for r in requests if r.id not in self.done]
        if only_failed:
            failed_before = _failed_ids(self.layout.failures)
            self.todo = [r for r in self.todo if r.id in failed_before]
        logger.info("%d requests: %d already in %s, %d to send", self.counts.requests, self.counts.cached,
                    self.layout.raw, len(self.todo))
        self.layout.config.write_text(yaml.safe_dump(redacted(self.recipe), sort_keys=False), encoding="utf-8")
        update_manifest(self.layout.manifest, self.manifest("running"))

    def send(self, backend: Backend | None, progress: bool, wait: bool) -> dict[str, Any]:
        """Send what is left (starting the teacher only when there is something to send);
        whatever happens, the failures ledger and the manifest are brought up to date."""
        status, own_backend, driver = "complete", backend is None and bool(self.todo), None
        previous_sigterm = _stop_on_sigterm()  # a scheduler's stop ends the run like Ctrl-C
        try:
            if own_backend:
                backend = self._start_backend(wait)
            if self.todo and self.recipe.multi_call:
                driver = Conversations(self.plan, backend)
            if self.todo:
                self._consume(driver or backend, progress)
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
            manifest = self.finish(status, backend, driver)
        if manifest["status"] == "interrupted":
            raise KeyboardInterrupt
        return manifest

    def _start_backend(self, wait: bool) -> Backend:
        """The teacher for generation: batch mode's backend, or the recipe's (synth.backends)."""
        if self.plan.batch_mode:
            return make_batch_backend(self.recipe.teacher, self.layout.batches, wait=wait, identity=self.plan.teacher)
        return make_backend(self.recipe.teacher, self.plan.teacher)

    def _consume(self, backend: Backend, progress: bool) -> None:
        out = self.recipe.output
        with contextlib.ExitStack() as stack:
            sinks = _Sinks(
                stack.enter_context(JsonlAppender(self.layout.raw, out.sync_every, out.sync_interval_s)),
                stack.enter_context(JsonlAppender(self.layout.failures, 1, out.sync_interval_s)),
                stack.enter_context(LogprobAppender(self.layout.logprobs, out.sync_every, out.sync_interval_s))
                if self.recipe.sampling.logprobs else None,
                getattr(backend, "vocab", None),
            )
            _consume(backend, self.todo, sinks, self.counts, self.done, self.plan.teacher, progress,
                     self.recipe.teacher.reasoning)

    def finish(self, status: str, backend: Any, driver: Conversations | None) -> dict[str, Any]:
        """The failures ledger compacted and the manifest written, with what this run did."""
        in_flight = getattr(backend, "in_flight", set())  # batch mode: requests still running
        self.counts.failed = _compact_failures(self.layout.failures, self.plan.request_ids, self.done | in_flight)
        if status == "complete" and in_flight:
            status = "pending"
        manifest = self.manifest(status)
        if backend is not None and getattr(backend, "stats", None) is not None:
            manifest["teacher_stats"] = dict(backend.stats)  # retries, 429s, concurrency
        if driver is not None:
            manifest["conversations"] = dict(driver.stats)  # teacher and simulator turns sent this run
        if backend is not None and getattr(backend, "summary", None) is not None:
            manifest["batches"] = {**backend.summary, "ledger": self.layout.batches.name}
        update_manifest(self.layout.manifest, manifest)
        return manifest

    def manifest(self, status: str) -> dict[str, Any]:
        return _manifest(self.plan, self.counts, self.stale, self.started, self.wall0, status)


def _stop_on_sigterm() -> Any:
    """SIGTERM raises _Interrupted from now on (flush, manifest, exit); returns the previous
    handler to restore, or None where signals cannot be set (not the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_on_sigterm)
    except ValueError:
        return None


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
        if self.logprobs is not None and result.topk is not None:
            # The logprobs first: a kill between the two writes leaves an entry that the
            # rerun's answer supersedes (the last entry of an id wins), never a record without.
            self.logprobs.append(rec["id"], rec["messages"], result.topk, self.vocab or UNKNOWN_VOCAB)
        self.raw.append(rec)
        return self.logprobs is None or result.topk is not None


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
    bar = progress_bar(len(todo), "generate", "req", progress)
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


def _logprob_summary(plan: Plan, counts: Counts) -> dict[str, Any]:
    path = plan.layout.logprobs
    size = path.stat().st_size if path.exists() else 0
    per_1k = round(1000 * size / counts.logprob_tokens) if counts.logprob_tokens else None
    return {"k": plan.recipe.sampling.logprobs, "file": path.name, "answers_without_this_run": counts.logprobs_missing,
            "answer_tokens": counts.logprob_tokens, "bytes_per_1k_answer_tokens": per_1k}


def _manifest(plan: Plan, counts: Counts, stale: int, started: str, wall0: float, status: str) -> dict[str, Any]:
    recipe = plan.recipe
    prompt, completion = counts.prompt_tokens, counts.completion_tokens
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
            "duplicate_requests": plan.requests.duplicates,
            "records_of_other_configs": stale,
        },
        "finish_reasons": counts.finish_reasons,
        **({"logprobs": _logprob_summary(plan, counts)} if recipe.sampling.logprobs else {}),
        "tokens": {
            "prompt": prompt,
            "completion": completion,
            "prompt_this_run": counts.new_prompt_tokens,
            "completion_this_run": counts.new_completion_tokens,
        },
        "cost_usd": cost_usd(recipe, prompt, completion),
        **({"cost_usd_sync": cost_usd(recipe, prompt, completion, sync=True)} if plan.batch_mode else {}),
        "config": redacted(recipe),
        "versions": package_versions(),
        "files": {name: getattr(plan.layout, name).name for name in ("raw", "failures", "config", "log")},
    }


# ---- the stage, and what it prints --------------------------------------------------------


class Generate(Stage):
    """Send every planned request the raw log does not hold (keyed item by item)."""

    name = "generate"
    always_runs = "sends only the requests not in raw.jsonl (each request's id is its key)"

    def __init__(self, plan: Plan, progress: bool = True, *, backend: Backend | None = None,
                 only_failed: bool = False, wait: bool = True):
        super().__init__(plan, progress)
        self.backend, self.only_failed, self.wait = backend, only_failed, wait

    def work(self, key: dict[str, Any] | None) -> StageResult:
        m = run_generate(self.plan, self.backend, progress=self.progress, only_failed=self.only_failed,
                         wait=self.wait)
        c = m["counts"]
        summary = f"{c['kept']} of {c['requests']} answered, {c['generated']} new, {c['failed']} failed"
        return self.result(summary, generate_lines(m, self.plan.recipe.output.dir), m)


def generate_lines(manifest: dict[str, Any], out_dir: str) -> list[str]:
    """What `synth generate` prints about a finished (or stopped) run."""
    c, t = manifest["counts"], manifest["tokens"]
    lines = [
        f"synth generate: {manifest['status']} in {manifest['wall_s']:.1f} s",
        f"  requests {c['requests']}: kept {c['kept']} ({c['generated']} new, {c['cached']} from earlier runs), "
        f"failed {c['failed']}, pending {c['pending']}",
        f"  tokens: {t['prompt']:,} prompt, {t['completion']:,} completion "
        f"({t['completion_this_run']:,} written this run)",
    ]
    if manifest.get("cost_usd") is not None:
        sync = manifest.get("cost_usd_sync")
        lines.append(f"  cost: ${manifest['cost_usd']:,.4f} at the recipe's prices"
                     + (f" (batch price; ${sync:,.4f} synchronous)" if sync is not None else ""))
    running = (manifest.get("batches") or {}).get("running")
    if running:
        lines.append(f"  pending: {c['pending']} requests in {len(running)} running batch(es) ({', '.join(running[:5])}"
                     + (", ..." if len(running) > 5 else "") + "); rerun the same command to collect them "
                     "(add --no-wait to check and return)")
    if manifest.get("finish_reasons"):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(manifest["finish_reasons"].items()))
        lines.append(f"  finish reasons: {reasons}")
    lines.append(f"  files: {out_dir}/raw.jsonl, failures.jsonl, manifest.json, run.log")
    if c["failed"]:
        lines.append("  failed requests are listed in failures.jsonl; rerun the same command to retry them")
    return lines


def dry_run_lines(r: dict[str, Any]) -> list[str]:
    """What `synth generate --dry-run` prints."""
    teacher = r["teacher"]
    lines = [
        f"synth generate --dry-run: {r['to_send']} requests to send ({r['requests']} planned, {r['done']} already done)",
        f"  teacher: {teacher['backend']} {teacher['model']}"
        + (f" at {teacher['base_url']}" if teacher.get("base_url") else ""),
        f"  prompt tokens (estimate, ~4 chars a token): {r['prompt_tokens_estimate']:,}",
        f"  completion tokens (at most, max_tokens each): {r['completion_tokens_max']:,}",
    ]
    if r["cost_usd_max"] is not None:
        sync = r.get("cost_usd_max_sync")
        lines.append(f"  cost: at most ${r['cost_usd_max']:,.4f}"
                     + (f" at the batch price (${sync:,.4f} synchronous)" if sync is not None else ""))
    lines.append("  nothing was sent")
    return lines
