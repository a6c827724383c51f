"""Benchmark: peak memory and speed of `synth curate` on a large raw log of short records.

Writes N short synthetic records (10% exact and near duplicates) to a raw log, then runs
run_curate with truncated, empty, refusal, exact_dedup, near_dedup and pii filters in this
process, and reports records/s and the peak RSS of the process (the raw log streams; the
dedup indexes and the id list are what grows).

    python bench/curate_memory.py [--records 1000000]

Last line: RESULT curate_memory records=<n> peak_rss_mib=<x> records_per_s=<y>
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    args = ap.parse_args()
    from shortlog import curate_recipe, new_run, write_raw

    from synth.curate import run_curate
    from synth.plan import resolve

    work, out = new_run("bench-curate-")
    t = time.perf_counter()
    write_raw(out / "raw.jsonl", args.records)
    size = (out / "raw.jsonl").stat().st_size
    print(f"wrote {args.records:,} records ({size / 2**20:,.0f} MiB) in {time.perf_counter() - t:.0f} s", flush=True)
    plan = resolve(curate_recipe(work, out, ["truncated", "empty", "refusal", {"name": "exact_dedup", "field": "answer"},
                                             {"name": "near_dedup", "field": "answer", "shingle": 3}, "pii"]))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    stats = run_curate(plan, progress=False)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"curated in {dt:.0f} s: kept {stats['kept']:,}, rejected {stats['rejected']:,} {stats['rejected_by_filter']}")
    print(f"peak RSS {peak:,.0f} MiB (before curation {rss0:,.0f} MiB)")
    print(f"RESULT curate_memory records={args.records} peak_rss_mib={peak:.0f} records_per_s={args.records / dt:.0f}")


if __name__ == "__main__":
    main()
