"""`synth curate`: the raw log into a training set, without calling the teacher again.

Deterministic: records are taken in request-id order (not in the order the teacher
finished them), filters run in the recipe's order, and outputs carry no timestamps, so a
rerun gives byte-identical files. Streaming: records are read one at a time from the raw
log by offset; only the dedup indexes and the id list stay in memory.

Outputs beside raw.jsonl: train.jsonl, eval.jsonl (when curate.eval_fraction > 0),
rejected.jsonl (each row with `rejection: {filter, reason}`), stats.json, and a
`curate` section in manifest.json. Counts add up: records = kept + rejected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.config import CurateConfig, Recipe, redacted
from synth.filters import build_filter, prompt_text
from synth.generate import MANIFEST, RAW, plan_requests
from synth.manifest import utc_now, write_json_atomically
from synth.rawlog import iter_records

logger = logging.getLogger(__name__)

TRAIN, EVAL, REJECTED, STATS = "train.jsonl", "eval.jsonl", "rejected.jsonl", "stats.json"


@dataclass
class _Entry:
    id: str
    offset: int
    length: int


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
                    entries.append(_Entry(rid, offset, len(line)))
                else:
                    skipped += 1
            offset += len(line)
    entries.sort(key=lambda e: e.id)
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


def run_curate(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Curate OUTPUT/raw.jsonl into train/eval/rejected files; returns the stats."""
    cfg = recipe.curate
    wall0 = time.monotonic()
    out = Path(recipe.output.dir)
    filters = [build_filter(spec, i) for i, spec in enumerate(cfg.filters)]
    planned = {r.id for r in plan_requests(recipe).requests} if cfg.only_planned else None
    entries, skipped = _index_raw(out / RAW, planned)
    if skipped:
        logger.info("%d records in %s belong to other configurations; left out (curate.only_planned)", skipped, out / RAW)

    per_filter = {f"{i}:{f.name}": 0 for i, f in enumerate(filters)}
    pii: dict[str, int] = {}
    kept_writer, rejected_writer = _Writer(out / TRAIN), _Writer(out / REJECTED)
    writers = [kept_writer, rejected_writer]

    def run(records, first: int, last: int, keep) -> None:
        """Apply filters[first:last] to records; rejections are written, survivors kept."""
        for rec in records:
            for i in range(first, last):
                reason = filters[i](rec)
                if reason is not None:
                    per_filter[f"{i}:{filters[i].name}"] += 1
                    rejected_writer.write({**rec, "rejection": {"filter": filters[i].name, "reason": reason}})
                    break
            else:
                keep(rec)

    def keep_final(rec: dict[str, Any]) -> None:
        for k, v in (rec.get("pii") or {}).items():
            pii[k] = pii.get(k, 0) + v
        kept_writer.write(rec)

    try:
        with (out / RAW).open("rb") as fh:
            records = _read_entries(fh, entries, progress)
            start = 0
            # A batch filter (the judge) needs all survivors of the filters before it: those
            # go to a stage file, the filter prepares on it, and the rest runs from there.
            for k, f in enumerate(filters):
                if getattr(f, "batch", False):
                    stage = _Writer(out / f".curate-stage-{k}.jsonl")
                    writers.append(stage)
                    run(records, start, k, stage.write)
                    stage.commit()
                    f.out_dir = out  # where the judge keeps its call cache
                    f.prepare(iter_records(stage.path))
                    records, start = iter_records(stage.path), k
            run(records, start, len(filters), keep_final)
        kept_writer.commit()
        rejected_writer.commit()
        split_counts = {"train": kept_writer.count, "eval": 0}
        if cfg.eval_fraction > 0 and kept_writer.count:
            split_counts = _write_split(out, cfg)
        else:
            (out / EVAL).unlink(missing_ok=True)
    except BaseException:
        for w in writers:
            if not w.fh.closed:
                w.abort()
        raise
    finally:
        for w in writers[2:]:
            w.path.unlink(missing_ok=True)

    stats = {
        "records": len(entries),
        "kept": kept_writer.count,
        "rejected": rejected_writer.count,
        "train": split_counts["train"],
        "eval": split_counts["eval"],
        "records_of_other_configs": skipped,
        "rejected_by_filter": per_filter,
        "pii_redacted": dict(sorted(pii.items())),
        "filters": [f.name for f in filters],
    }
    assert stats["records"] == stats["kept"] + stats["rejected"]
    write_json_atomically(out / STATS, stats)  # a function of data and config only: no run facts
    # What this run had to do (judge calls sent vs cached) goes to the manifest, not stats.json.
    calls = {f"{f.name}_calls": f.stats for f in filters if getattr(f, "batch", False)}
    _update_manifest(out, recipe, stats, calls, time.monotonic() - wall0)
    return {**stats, **calls}


def _read_entries(fh, entries: list[_Entry], progress: bool):
    from tqdm.auto import tqdm

    for entry in tqdm(entries, unit="rec", desc="curate", disable=not progress, dynamic_ncols=True):
        fh.seek(entry.offset)
        yield json.loads(fh.read(entry.length))


def _write_split(out: Path, cfg: CurateConfig) -> dict[str, int]:
    assignment = _split(out / TRAIN, cfg)
    train, evals = _Writer(out / (TRAIN + ".split")), _Writer(out / EVAL)
    for rec in iter_records(out / TRAIN):
        (evals if assignment[rec["id"]] == "eval" else train).write(rec)
    train.commit()
    evals.commit()
    os.replace(out / (TRAIN + ".split"), out / TRAIN)
    return {"train": train.count, "eval": evals.count}


def _update_manifest(out: Path, recipe: Recipe, stats: dict[str, Any], calls: dict[str, Any], wall_s: float) -> None:
    path = out / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    funnel, remaining = [{"stage": "raw", "count": stats["records"]}], stats["records"]
    for key, rejected in stats["rejected_by_filter"].items():
        remaining -= rejected
        funnel.append({"stage": key.split(":", 1)[1], "rejected": rejected, "remaining": remaining})
    manifest["curate"] = {
        "finished_at": utc_now(),
        "wall_s": round(wall_s, 3),
        "funnel": funnel,
        "stats": stats,
        **calls,
        "config": redacted(recipe)["curate"],
        "files": {"train": TRAIN, "eval": EVAL if stats["eval"] else None, "rejected": REJECTED, "stats": STATS},
    }
    write_json_atomically(path, manifest)
