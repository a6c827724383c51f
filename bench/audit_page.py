"""Benchmark: the audit page's index on a 1M-record run, against scanning the JSONL files.

Writes N short records (10% repeats, a few with e-mail addresses and a rare word), curates
them (exact_dedup, pii), builds the audit index (synth.audit) and times what the page asks:
the summary, the first page, a page deep in the list, a stage filter, a full-text search for
a rare word, and one record in full. The peer is what a reviewer does without the page: read
train.jsonl and rejected.jsonl line by line for the same word (the Python equivalent of grep
plus json). Peak RSS of this process is printed too: the page never holds the run in memory.

    python bench/audit_page.py [--records 1000000]

Last line: RESULT audit_page records=<n> build_s=<s> search_ms=<ms> scan_ms=<ms> ratio=<scan/search>
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def timed(label: str, fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    print(f"  {label:<44} {best * 1000:9.1f} ms")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    args = ap.parse_args()
    from shortlog import curate_recipe, new_run, write_raw

    from synth.curate import run_curate
    from synth.plan import resolve
    from synth.viewer import Audit

    work, out = new_run("bench-audit-")
    write_raw(out / "raw.jsonl", args.records, marked=True)
    plan = resolve(curate_recipe(work, out, ["empty", {"name": "exact_dedup", "field": "answer"}, "pii"]))
    t = time.perf_counter()
    run_curate(plan, progress=False)
    print(f"{args.records:,} records written and curated in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    audit = Audit(out, progress=False)
    build_s = time.perf_counter() - t
    size = audit.index.stat().st_size / 2**20
    print(f"audit index built in {build_s:.1f} s ({size:,.0f} MiB on disk); queries (best of 5):")
    timed("summary (funnel, counts by stage/filter/PII)", audit.summary)
    timed("first page of 50", lambda: audit.records({}))
    timed("page 10,000 of 50", lambda: audit.records({"page": "10000"}))
    timed("rejected by exact_dedup, first page", lambda: audit.records({"filter": "exact_dedup"}))
    timed("records with an e-mail redacted", lambda: audit.records({"pii": "email"}))
    search_s = timed("full-text search of a rare word", lambda: audit.records({"q": "zanzibar"}))
    timed("one record in full", lambda: audit.record(123_456 % max(args.records, 1) + 1))
    hits = audit.records({"q": "zanzibar"})["total"]

    def scan() -> int:
        found = 0
        for name in ("train.jsonl", "rejected.jsonl"):
            with (out / name).open(encoding="utf-8") as fh:
                for line in fh:
                    rec = json.loads(line)
                    found += any("zanzibar" in (m.get("content") or "") for m in rec["messages"])
        return found

    scan_s = timed("peer: scan train+rejected JSONL for the word", scan, repeat=1)
    assert scan() == hits, (scan(), hits)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{hits} hits both ways; peak RSS {peak:,.0f} MiB")
    print(f"RESULT audit_page records={args.records} build_s={build_s:.1f} search_ms={search_s * 1000:.1f} "
          f"scan_ms={scan_s * 1000:.0f} ratio={scan_s / search_s:.0f}")


if __name__ == "__main__":
    main()
