"""`synth curate`: the raw log into a training set, without calling the teacher again.

Deterministic: records are taken in request-id order (not in the order the teacher
finished them), filters run in the recipe's order, and outputs carry no timestamps, so a
rerun gives byte-identical files. Streaming: records are read one at a time from the raw
log by offset and flow through the filters as a chain of generators; only the dedup
indexes and the id list stay in memory.

Outputs beside raw.jsonl: train.jsonl, eval.jsonl (when curate.eval_fraction > 0),
rejected.jsonl (each row with `rejection: {filter, reason}`), stats.json, a `curate`
section in manifest.json and the stage stamp (synth.stages). Counts add up:
records = kept + rejected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.config import CurateConfig, Recipe, redacted
from synth.filters import Filter, build_filter, prompt_text
from synth.generate import plan_requests
from synth.layout import Layout
from synth.manifest import update_manifest
from synth.rawlog import DirLock, iter_records, repeated_request
from synth.runtime import utc_now, write_json_atomically

logger = logging.getLogger(__name__)

@dataclass
class _Entry:
    id: str
    offset: int
    length: int
    line: int


def _index_raw(raw: Path, planned: set[str] | None) -> tuple[list[_Entry], int]:
    """(entries of the records to curate, sorted by id; how many records were left out)."""
    if not raw.exists():
        raise ValueError(f"output.dir: {raw} does not exist; run `synth generate` first")
    entries, skipped, offset = [], 0, 0
    with raw.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rid = json.loads(line)["id"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{raw} line {lineno} is not a valid record; fix or delete that line") from None
                if planned is None or rid in planned:
                    entries.append(_Entry(rid, offset, len(line), lineno))
                else:
                    skipped += 1
            offset += len(line)
    entries.sort(key=lambda e: (e.id, e.line))
    for a, b in zip(entries, entries[1:], strict=False):
        if a.id == b.id:
            raise repeated_request(raw, a.id, a.line, b.line)
    return entries, skipped


class _Writer:
    """A JSONL file written under a temporary name and renamed into place on success."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.fh = self.tmp.open("w", encoding="utf-8")
        self.count = 0

    def write(self, rec: dict[str, Any]) -> None:
        self.fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n")
        self.count += 1

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def _split(kept_path: Path, cfg: CurateConfig) -> dict[str, str]:
    """Assign each kept record to train or eval, keeping near-duplicate prompts together.

    Prompts are clustered with MinHash LSH (union of every pair at or above
    split_threshold); a cluster goes to eval when the hash of its first id and eval_seed
    falls under eval_fraction. Returns id -> "train" | "eval".
    """
    from synth.filters.dedup import NearIndex

    index = NearIndex(cfg.split_threshold, 3, 64, None, 0)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    ids = []
    for rec in iter_records(kept_path):
        rid = rec["id"]
        ids.append(rid)
        parent[rid] = rid
        for other in index.link(rid, prompt_text(rec)):
            a, b = find(rid), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the smaller id is the root: order-independent
    out = {}
    for rid in ids:
        root = find(rid)
        h = int.from_bytes(hashlib.blake2b(f"{cfg.eval_seed}:{root}".encode(), digest_size=8).digest(), "big")
        out[rid] = "eval" if h / 2**64 < cfg.eval_fraction else "train"
    return out


def run_curate(recipe: Recipe, progress: bool = True, key: dict[str, Any] | None = None) -> dict[str, Any]:
    """Curate OUTPUT/raw.jsonl into train/eval/rejected files; returns the stats.

    `key` is the stage key when the caller computed it already (synth run)."""
    from synth.stages import curate_key, write_stamp

    layout = recipe.layout
    with DirLock(layout.root):
        key = key if key is not None else curate_key(recipe)
        wall0 = time.monotonic()
        filters = [build_filter(spec, i) for i, spec in enumerate(recipe.curate.filters)]
        planned = {r.id for r in plan_requests(recipe).requests} if recipe.curate.only_planned else None
        entries, skipped = _index_raw(layout.raw, planned)
        if skipped:
            logger.info("%d records in %s belong to other configurations; left out (curate.only_planned)", skipped, layout.raw)
        counts = _filter_all(layout, filters, entries, progress)
        split = _write_split(layout, recipe.curate) if recipe.curate.eval_fraction > 0 and counts["kept"] else None
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
        if recipe.sampling.logprobs or layout.logprobs.exists():  # captured, or scored (synth score)
            stats["logprobs"] = _logprob_counts(layout)
        assert stats["records"] == stats["kept"] + stats["rejected"]
        write_json_atomically(layout.stats, stats)  # a function of data and config only: no run facts
        # What this run had to do (judge calls sent vs cached) goes to the manifest, not stats.json.
        calls = {f"{f.name}_calls": f.stats for f in filters if f.batch}
        _update_manifest(layout, recipe, stats, calls, time.monotonic() - wall0)
        write_stamp(layout.stamp("curate"), key)
    return {**stats, **calls}


def _filter_all(layout: Layout, filters: list[Filter], entries: list[_Entry], progress: bool) -> dict[str, Any]:
    """Run every record through the filters (first rejection wins) into train.jsonl and
    rejected.jsonl, written under temporary names and renamed into place at the end."""
    kept, rejected = _Writer(layout.train), _Writer(layout.rejected)
    scratch: list[_Writer] = []
    pii: dict[str, int] = {}

    def reject(rec: dict[str, Any], name: str, reason: str) -> None:
        rejected.write({**rec, "rejection": {"filter": name, "reason": reason}})

    try:
        with layout.raw.open("rb") as fh:
            records: Iterable[dict[str, Any]] = _read_entries(fh, entries, progress)
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
                records = f.apply(records, reject)
            for rec in records:
                for name, n in (rec.get("pii") or {}).items():
                    pii[name] = pii.get(name, 0) + n
                kept.write(rec)
        kept.commit()
        rejected.commit()
    except BaseException:
        for w in (kept, rejected, *scratch):
            if not w.fh.closed:
                w.abort()
        raise
    finally:
        for w in scratch:
            w.path.unlink(missing_ok=True)
    return {"kept": kept.count, "rejected": rejected.count, "pii": dict(sorted(pii.items()))}


def _read_entries(fh, entries: list[_Entry], progress: bool):
    from tqdm.auto import tqdm

    for entry in tqdm(entries, unit="rec", desc="curate", disable=not progress, dynamic_ncols=True):
        fh.seek(entry.offset)
        yield json.loads(fh.read(entry.length))


def _logprob_counts(layout: Layout) -> dict[str, int]:
    """How many kept records have the teacher's logprobs for exactly their answer ("ok"), had
    their answer edited by a filter since ("changed": PII redaction), or have none ("missing")."""
    from synth.logprobs import LogprobStore

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
    staged = layout.train.with_name(layout.train.name + ".split")
    train, evals = _Writer(staged), _Writer(layout.eval)
    for rec in iter_records(layout.train):
        (evals if assignment[rec["id"]] == "eval" else train).write(rec)
    train.commit()
    evals.commit()
    os.replace(staged, layout.train)
    return {"train": train.count, "eval": evals.count}


def _update_manifest(layout: Layout, recipe: Recipe, stats: dict[str, Any], calls: dict[str, Any], wall_s: float) -> None:
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
        "config": redacted(recipe)["curate"],
        "files": files,
    }})
