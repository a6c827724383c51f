"""`synth curate`: the raw log into a training set, without calling the teacher again.

Deterministic: records are taken in request-id order (not in the order the teacher
finished them), filters run in the recipe's order, and outputs carry no timestamps, so a
rerun gives byte-identical files. Streaming: records are read one at a time from the raw
log by offset and flow through the filters as a chain of generators; only the dedup
indexes and the id list stay in memory.

Outputs beside raw.jsonl: train.jsonl, eval.jsonl (when curate.eval_fraction > 0),
rejected.jsonl (each row with `rejection: {filter, reason}`), stats.json, a `curate`
section in manifest.json and the stage stamp. Counts add up: records = kept + rejected.

The Curate stage's key: the raw log's bytes; the curate section (except checkpoint_s, which
says how often, not what); what each filter reads besides its options (eval sets, schema
files, the verifier's source file, the judge's template and identity, tokenizers and
embedders); the logprobs sidecar's size; and with only_planned, what the planned request
ids depend on (seeds, template, teacher, sampling, conversation settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.config import CurateConfig, redacted
from synth.configtools import canonical_dict
from synth.filters import Filter, prompt_text
from synth.filters.dedup import NearIndex
from synth.fingerprint import path_digest
from synth.layout import Layout
from synth.logprobs import LogprobStore
from synth.manifest import update_manifest
from synth.plan import Plan
from synth.rawlog import iter_records, repeated_request
from synth.runtime import commit_file, file_sha256, progress_bar, utc_now, write_json_atomically
from synth.stage import Stage, StageResult

logger = logging.getLogger(__name__)

@dataclass
class _Entries:
    """Where each record to curate sits in the raw log, in id order: 16 bytes a record."""

    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int32
    lines: np.ndarray  # int32, for error messages

    def __len__(self) -> int:
        return len(self.offsets)


_ID_PREFIX = b'{"id": "'
_CHUNK = 1 << 16


def _line_id(line: bytes, raw: Path, lineno: int) -> str:
    """The record's id: read from the line's start when synth wrote it (id first, plain
    characters), else parsed from the whole line."""
    if line.startswith(_ID_PREFIX):
        end = line.find(b'"', len(_ID_PREFIX))
        rid = line[len(_ID_PREFIX) : end]
        if end > 0 and b"\\" not in rid:
            return rid.decode()
    try:
        return json.loads(line)["id"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{raw} line {lineno} is not a valid record; fix or delete that line") from None


def _index_raw(raw: Path, planned: set[str] | None) -> tuple[_Entries, int]:
    """(where the records to curate are, sorted by id; how many records were left out).
    Ids are read from each line's start; a line is parsed in full when it is curated."""
    if not raw.exists():
        raise ValueError(f"output.dir: {raw} does not exist; run `synth generate` first")
    ids: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    lines: list[np.ndarray] = []
    chunk_ids: list[str] = []
    chunk: list[tuple[int, int, int]] = []
    skipped, offset = 0, 0

    def flush() -> None:
        if chunk:
            ids.append(np.array([rid.encode() for rid in chunk_ids], dtype=np.bytes_))  # bytes sort as str does
            o, n, ln = zip(*chunk, strict=True)
            offsets.append(np.array(o, np.int64))
            lengths.append(np.array(n, np.int32))
            lines.append(np.array(ln, np.int32))
            chunk_ids.clear()
            chunk.clear()

    with raw.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                rid = _line_id(line, raw, lineno)
                if planned is None or rid in planned:
                    chunk_ids.append(rid)
                    chunk.append((offset, len(line), lineno))
                    if len(chunk) == _CHUNK:
                        flush()
                else:
                    skipped += 1
            offset += len(line)
    flush()
    if not ids:
        empty = _Entries(np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int32))
        return empty, skipped
    all_ids = np.concatenate(ids)
    ids.clear()
    order = np.argsort(all_ids, kind="stable")  # equal ids keep their line order
    all_ids = all_ids[order]
    repeats = np.flatnonzero(all_ids[1:] == all_ids[:-1])
    entries = _Entries(np.concatenate(offsets)[order], np.concatenate(lengths)[order], np.concatenate(lines)[order])
    if len(repeats):
        j = int(repeats[0])
        raise repeated_request(raw, bytes(all_ids[j]).decode(), int(entries.lines[j]), int(entries.lines[j + 1]))
    return entries, skipped


class _Writer:
    """A JSONL file written under a temporary name and renamed into place on success."""

    def __init__(self, path: Path, resume: dict[str, int] | None = None):
        """resume: {size, count} of a checkpoint: the .tmp file is cut back to `size` bytes
        and written on from there."""
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        if resume is None:
            self.fh = self.tmp.open("w", encoding="utf-8")
            self.count = 0
        else:
            os.truncate(self.tmp, resume["size"])
            self.fh = self.tmp.open("a", encoding="utf-8")
            self.count = resume["count"]

    def write(self, rec: dict[str, Any]) -> None:
        self.fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n")
        self.count += 1

    def commit(self) -> None:
        commit_file(self.fh, self.tmp, self.path)

    def sync(self) -> int:
        """Flush and fsync; returns the file's size."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        return self.tmp.stat().st_size

    def close(self) -> None:
        self.fh.close()

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def _split(kept_path: Path, cfg: CurateConfig) -> dict[str, str]:
    """Assign each kept record to train or eval, keeping near-duplicate prompts together.

    Prompts are clustered with MinHash LSH (union of every pair at or above
    split_threshold); a cluster goes to eval when the hash of eval_seed and its smallest
    prompt hash falls under eval_fraction. Only the prompts' text decides (not the ids, which
    carry the teacher's fingerprint and so where its model lives): the same seeds give the
    same held-out prompts on every machine and for every teacher. Returns id -> "train" | "eval".
    """
    index = NearIndex(cfg.split_threshold, 3, 64, None, 0)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    ids: list[str] = []
    text_hash: dict[str, str] = {}

    def link(block: list[dict[str, Any]]) -> None:
        keys = [rec["id"] for rec in block]
        texts = [prompt_text(rec) for rec in block]
        for rid, text, others in zip(keys, texts, index.link_many(keys, texts), strict=True):
            ids.append(rid)
            parent[rid] = rid
            text_hash[rid] = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
            for other in others:
                a, b = sorted((find(rid), find(other)), key=lambda x: (text_hash[x], x))
                if a != b:
                    parent[b] = a  # the smallest prompt hash is the root: order-independent

    block: list[dict[str, Any]] = []
    for rec in iter_records(kept_path):
        block.append(rec)
        if len(block) == 1024:
            link(block)
            block = []
    if block:
        link(block)
    out = {}
    for rid in ids:
        root = find(rid)
        h = int.from_bytes(hashlib.blake2b(f"{cfg.eval_seed}:{text_hash[root]}".encode(), digest_size=8).digest(), "big")
        out[rid] = "eval" if h / 2**64 < cfg.eval_fraction else "train"
    return out


def curate_key(plan: Plan) -> dict[str, Any]:
    """The Curate stage's key (see the module docstring)."""
    recipe, layout = plan.recipe, plan.layout
    cfg = recipe.curate
    key: dict[str, Any] = {
        "raw": file_sha256(layout.raw),
        "curate": {k: v for k, v in canonical_dict(cfg).items() if k != "checkpoint_s"},  # how often, not what
        "filters": [entry.inputs() for entry in plan.filters],
    }
    if layout.logprobs.exists():  # counted in stats.json and the card; append-only, so its size
        key["logprobs"] = layout.logprobs.stat().st_size  # says when `synth score` added to it
    if cfg.only_planned:
        prompts, template = recipe.generation_seeds, recipe.template
        key["requests"] = canonical_dict({
            "prompts": {**canonical_dict(prompts), "data": path_digest(Path(prompts.path))},
            "template": {**canonical_dict(template), "source": file_sha256(Path(template.path)),
                         "fewshot": file_sha256(Path(template.fewshot)) if template.fewshot else None},
            "teacher": plan.teacher,
            "sampling": recipe.sampling,
        })
        if recipe.multi_call:  # conversations and tools: their settings are in every planned id
            key["requests"]["conversation"] = canonical_dict(plan.conversation)
    return key


class Curate(Stage):
    """The raw log through the filters into train/eval/rejected (keyed; see the module docstring)."""

    name = "curate"

    def key(self) -> dict[str, Any]:
        return curate_key(self.plan)

    def stamp(self) -> Path:
        return self.plan.layout.stamp("curate")

    def outputs(self) -> tuple[Path, ...]:
        return (self.plan.layout.train, self.plan.layout.stats)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        s = _curate(self.plan, self.progress, key)
        summary = f"kept {s['kept']} (train {s['train']}, eval {s['eval']}), rejected {s['rejected']}"
        result = self.result(summary, curate_lines(s, self.plan.recipe.output.dir), s)
        # judge calls that failed (after their retries): their records are rejected for now, the
        # stage is not complete, and the next run asks those calls again (the rest are cached)
        result.complete = not failed_calls(s)
        return result


def failed_calls(stats: dict[str, Any]) -> int:
    """Judge calls of the batch filters (judge, grounded, decontam, the pii detector) that failed."""
    return sum(v.get("failed", 0) for k, v in stats.items() if k.endswith("_calls") and isinstance(v, dict))


def run_curate(plan: Plan, progress: bool = True) -> dict[str, Any]:
    """Curate OUTPUT/raw.jsonl into train/eval/rejected files now (the stage, forced); returns
    the stats and this run's filter calls."""
    return Curate(plan, progress).run(force=True).details


def curate_lines(stats: dict[str, Any], out: str) -> list[str]:
    """What `synth curate` prints."""
    lines = [f"synth curate: {stats['records']} records -> kept {stats['kept']} "
             f"(train {stats['train']}, eval {stats['eval']}), rejected {stats['rejected']}"]
    for key, n in stats["rejected_by_filter"].items():
        lines.append(f"  {key.split(':', 1)[1]:<12} rejected {n}")
    if stats["pii_redacted"]:
        lines.append("  PII redacted: " + ", ".join(f"{k} x{v}" for k, v in stats["pii_redacted"].items()))
    lines.append(f"  files: {out}/train.jsonl" + (", eval.jsonl" if stats["eval"] else "") + ", rejected.jsonl, stats.json")
    failed = failed_calls(stats)
    if failed:
        lines.append(f"  {failed} judge calls failed: their records are rejected for now; the next run asks "
                     "those calls again")
    return lines


def _curate(plan: Plan, progress: bool, key: dict[str, Any] | None) -> dict[str, Any]:
    layout, cfg = plan.layout, plan.recipe.curate
    wall0 = time.monotonic()
    filters = [entry.build() for entry in plan.filters]
    entries, skipped = _index_raw(layout.raw, plan.request_ids if cfg.only_planned else None)
    if skipped:
        logger.info("%d records in %s belong to other configurations; left out (curate.only_planned)", skipped, layout.raw)
    counts = _filter_all(layout, filters, entries, progress, key, cfg.checkpoint_s)
    split = _write_split(layout, cfg) if cfg.eval_fraction > 0 and counts["kept"] else None
    if split is None:
        layout.eval.unlink(missing_ok=True)
        split = {"train": counts["kept"], "eval": 0}
    stats = {
        "records": len(entries),
        "kept": counts["kept"],
        "rejected": counts["rejected"],
        **split,
        "records_of_other_configs": skipped,
        "rejected_by_filter": {f"{i}:{f.name}": f.rejected for i, f in enumerate(filters)},
        "pii_redacted": counts["pii"],
        "filters": [f.name for f in filters],
    }
    selection = [f.summary for f in filters if getattr(f, "summary", None)]
    if selection:  # best_of_n: how often the teacher passes (pass@1, pass@n)
        stats["selection"] = selection[-1]
    if plan.recipe.sampling.logprobs or layout.logprobs.exists():  # captured, or scored (synth score)
        stats["logprobs"] = _logprob_counts(layout)
    assert stats["records"] == stats["kept"] + stats["rejected"]
    write_json_atomically(layout.stats, stats)  # a function of data and config only: no run facts
    # What this run had to do (judge calls sent vs cached) goes to the manifest, not stats.json.
    calls = {f"{f.name}_calls": f.stats for f in filters if f.batch}
    if counts.get("resumed_at"):
        calls["resumed_at"] = counts["resumed_at"]  # records a killed curation had decided already
    _update_manifest(plan, stats, calls, time.monotonic() - wall0)
    return {**stats, **calls}


def _filter_all(layout: Layout, filters: list[Filter], entries: _Entries, progress: bool,
                key: dict[str, Any] | None = None, checkpoint_s: float = 120.0) -> dict[str, Any]:
    """Run every record through the filters (first rejection wins) into train.jsonl and
    rejected.jsonl, written under temporary names and renamed into place at the end. Without
    batch filters it checkpoints (see _Checkpoint) and resumes a killed curation."""
    batch = [f"{f.where} ({f.name})" for f in filters if f.batch]
    if batch or key is None:
        if batch and (layout.curate_checkpoint.exists() or layout.train.with_name(layout.train.name + ".tmp").exists()):
            logger.warning("an interrupted curation is not resumed: %s needs every record before deciding, so curation "
                           "with it is not checkpointed; it starts again from the first record (judge calls are cached)",
                           batch[0])
        _remove_tree(layout.curate_checkpoint)
        return _filter_batched(layout, filters, entries, progress)
    return _filter_streaming(layout, filters, entries, progress, key, checkpoint_s)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _Checkpoint:
    """Resumable curation: every `checkpoint_s` (at a block boundary, when every record read
    so far is decided), the writers are fsynced and their sizes recorded with the position in
    the id-ordered records, each filter's state (dedup indexes as numpy arrays; near-dedup's
    signatures are an append-only file here already, so only its length is recorded) and the
    stage key. A rerun with the same key cuts the .tmp outputs back to the recorded sizes and
    goes on from that position: nothing finished is redone, nothing is written twice."""

    def __init__(self, folder: Path, key: dict[str, Any]):
        self.folder, self.key = folder, json.loads(json.dumps(key, sort_keys=True, default=str))
        self.meta: dict[str, Any] | None = None
        self.seq = 0

    def load(self, writers: dict[str, Path]) -> dict[str, Any] | None:
        meta_path = self.folder / "meta.json"
        meta = None
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            why = None
            if meta.get("key") != self.key:
                why = "the raw log, the recipe's curation or a filter's inputs changed since"
            elif any(not p.exists() or p.stat().st_size < meta["writers"][name]["size"] for name, p in writers.items()):
                why = "its partial outputs are gone"
            if why:
                logger.info("not resuming the interrupted curation (%s): starting from the first record", why)
                meta = None
        if meta is None:
            _remove_tree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.seq = meta["seq"] if meta else 0
        return meta

    def save(self, position: int, writers: dict[str, _Writer], pii: dict[str, int], filters: list[Filter]) -> None:
        arrays: dict[str, Any] = {}
        states = [f.save_state(arrays, f"f{i}_") for i, f in enumerate(filters)]
        sizes = {name: {"size": w.sync(), "count": w.count} for name, w in writers.items()}
        self.seq += 1
        state_path = self.folder / f"state-{self.seq}.npz"
        with state_path.open("wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        write_json_atomically(self.folder / "meta.json", {"key": self.key, "position": position, "seq": self.seq,
                                                          "writers": sizes, "pii": pii, "filters": states})
        for old in self.folder.glob("state-*.npz"):
            if old != state_path:
                old.unlink()

    def restore(self, filters: list[Filter]) -> None:
        assert self.meta is not None
        with np.load(self.folder / f"state-{self.seq}.npz") as arrays:
            for i, (f, state) in enumerate(zip(filters, self.meta["filters"], strict=True)):
                f.load_state(state, arrays, f"f{i}_")


_SEGMENT = 16_384  # records between the points where a checkpoint may be taken


class _Outputs:
    """Where curation writes: train.jsonl (kept) and rejected.jsonl (each row with its
    rejection), under temporary names until `commit`, with the PII counts of the kept
    records. Both paths (streaming and batched) write through it."""

    def __init__(self, layout: Layout, resume: dict[str, Any] | None = None):
        """resume: a checkpoint's {writers: {train, rejected}: {size, count}, pii}."""
        self.writers = {name: _Writer(path, resume=resume["writers"][name] if resume else None)
                        for name, path in (("train", layout.train), ("rejected", layout.rejected))}
        self.kept, self.rejected = self.writers["train"], self.writers["rejected"]
        self.pii: dict[str, int] = dict(resume["pii"]) if resume else {}

    def reject(self, rec: dict[str, Any], name: str, reason: str) -> None:
        self.rejected.write({**rec, "rejection": {"filter": name, "reason": reason}})

    def keep_all(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            for name, n in (rec.get("pii") or {}).items():
                self.pii[name] = self.pii.get(name, 0) + n
            self.kept.write(rec)

    def commit(self) -> None:
        self.kept.commit()
        self.rejected.commit()

    def stop(self, keep_partial: bool) -> None:
        """After an error or a kill: close the temporary files, keeping them only when a
        checkpoint needs them."""
        for w in self.writers.values():
            if not w.fh.closed:
                w.close() if keep_partial else w.abort()

    def counts(self) -> dict[str, Any]:
        return {"kept": self.kept.count, "rejected": self.rejected.count, "pii": dict(sorted(self.pii.items()))}


def _filter_streaming(layout: Layout, filters: list[Filter], entries: _Entries, progress: bool,
                      key: dict[str, Any], checkpoint_s: float) -> dict[str, Any]:
    ckpt = _Checkpoint(layout.curate_checkpoint, key)
    meta = ckpt.load({name: p.with_name(p.name + ".tmp") for name, p in (("train", layout.train),
                                                                         ("rejected", layout.rejected))})
    for f in filters:
        f.attach(ckpt.folder)
    start = 0
    if meta:
        ckpt.restore(filters)
        start = meta["position"]
        logger.info("resuming an interrupted curation at record %d of %d (its checkpoint)", start, len(entries))
    out = _Outputs(layout, resume=meta)
    last = time.monotonic()
    saved = bool(meta)
    try:
        with layout.raw.open("rb") as fh, progress_bar(len(entries), "curate", "rec", progress, initial=start) as bar:
            for begin in range(start, len(entries), _SEGMENT):
                end = min(begin + _SEGMENT, len(entries))
                records: Iterable[dict[str, Any]] = _read_entries(fh, entries, begin, end, bar)
                for f in filters:
                    records = f.apply(records, out.reject)
                out.keep_all(records)
                if end < len(entries) and time.monotonic() - last >= checkpoint_s:
                    ckpt.save(end, out.writers, out.pii, filters)
                    saved, last = True, time.monotonic()
        out.commit()
    except BaseException:
        out.stop(keep_partial=saved)  # a checkpoint needs its partial outputs
        raise
    _remove_tree(ckpt.folder)
    result = out.counts()
    if start:
        result["resumed_at"] = start
    return result


def _filter_batched(layout: Layout, filters: list[Filter], entries: _Entries, progress: bool) -> dict[str, Any]:
    """_filter_all for chains with a batch filter: one pass, no checkpoints."""
    out = _Outputs(layout)
    scratch: list[_Writer] = []
    try:
        with layout.raw.open("rb") as fh, progress_bar(len(entries), "curate", "rec", progress) as bar:
            records: Iterable[dict[str, Any]] = _read_entries(fh, entries, 0, len(entries), bar)
            for k, f in enumerate(filters):
                if f.batch:
                    # A batch filter needs every survivor of the filters before it: they go to a
                    # scratch file, the filter prepares on it, and the chain goes on from there.
                    stage = _Writer(layout.curate_stage_file(k))
                    scratch.append(stage)
                    for rec in records:
                        stage.write(rec)
                    stage.commit()
                    f.prepare(iter_records(stage.path), layout.root)
                    records = iter_records(stage.path)
                records = f.apply(records, out.reject)
            out.keep_all(records)
        out.commit()
    except BaseException:
        out.stop(keep_partial=False)
        for w in scratch:
            if not w.fh.closed:
                w.abort()
        raise
    finally:
        for w in scratch:
            w.path.unlink(missing_ok=True)
    return out.counts()


def _read_entries(fh, entries: _Entries, begin: int, end: int, bar):
    """Records begin..end (in id order) from the raw log, counted on the progress bar."""
    for offset, length, lineno in zip(entries.offsets[begin:end].tolist(), entries.lengths[begin:end].tolist(),
                                      entries.lines[begin:end].tolist(), strict=True):
        fh.seek(offset)
        try:
            rec = json.loads(fh.read(length))
        except ValueError:
            raise ValueError(f"{fh.name} line {lineno} is not valid JSON; fix or delete that line") from None
        bar.update()
        yield rec


def _logprob_counts(layout: Layout) -> dict[str, int]:
    """How many kept records have the teacher's logprobs for exactly their answer ("ok"), had
    their answer edited by a filter since ("changed": PII redaction), or have none ("missing")."""
    store = LogprobStore(layout.logprobs)
    counts = {"ok": 0, "changed": 0, "missing": 0}
    try:
        for path in (layout.train, layout.eval):
            for rec in iter_records(path):
                counts[store.status(rec["id"], rec["messages"])] += 1
    finally:
        store.close()
    return counts


def _write_split(layout: Layout, cfg: CurateConfig) -> dict[str, int]:
    assignment = _split(layout.train, cfg)
    train, evals = _Writer(layout.train), _Writer(layout.eval)  # written beside, renamed over it at the end
    for rec in iter_records(layout.train):
        (evals if assignment[rec["id"]] == "eval" else train).write(rec)
    train.commit()
    evals.commit()
    return {"train": train.count, "eval": evals.count}


def _update_manifest(plan: Plan, stats: dict[str, Any], calls: dict[str, Any], wall_s: float) -> None:
    layout = plan.layout
    funnel, remaining = [{"stage": "raw", "count": stats["records"]}], stats["records"]
    for key, rejected in stats["rejected_by_filter"].items():
        remaining -= rejected
        funnel.append({"stage": key.split(":", 1)[1], "rejected": rejected, "remaining": remaining})
    files = {name: getattr(layout, name).name for name in ("train", "eval", "rejected", "stats")}
    if not stats["eval"]:
        files["eval"] = None
    update_manifest(layout.manifest, {"curate": {
        "finished_at": utc_now(),
        "wall_s": round(wall_s, 3),
        "funnel": funnel,
        "stats": stats,
        **calls,
        "config": redacted(plan.recipe)["curate"],
        "files": files,
    }})
