"""Benchmark: precision and recall of the pii filter's `person` and `address` detectors.

bench/data/pii_names.jsonl: self-written sentences (compliance documents, tickets, e-mails)
with every person name and postal address labelled, and decoys a naive detector flags
(product and company names, places in regulation names, version and section numbers).
A detected span counts as right when it overlaps a labelled span of the same type (and
"exact" when it is the same text, surrounding punctuation aside); recall counts the
labelled spans some detection of their type overlaps.

    python bench/pii_names.py

Last line: RESULT pii_names person_p=<..> person_r=<..> address_p=<..> address_r=<..>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "bench" / "data" / "pii_names.jsonl"


def main() -> None:
    from synth.filters.pii_names import find_spans

    rows = [json.loads(line) for line in DATA.open(encoding="utf-8")]
    totals = {t: {"pred": 0, "tp": 0, "exact": 0, "gold": 0, "found": 0} for t in ("person", "address")}
    decoy_hits, misses, false = 0, [], []
    for row in rows:
        text = row["text"]
        gold = []
        for span in row["spans"]:
            start = text.index(span["text"])
            gold.append((span["type"], start, start + len(span["text"])))
        pred = find_spans(text, ["person", "address"])
        for kind, s, e in pred:
            t = totals[kind]
            t["pred"] += 1
            hit = [g for g in gold if g[0] == kind and s < g[2] and g[1] < e]
            if hit:
                t["tp"] += 1
                t["exact"] += any(text[s:e].strip(" .,;") == text[g[1]:g[2]].strip(" .,;") for g in hit)
            else:
                false.append((row["id"], kind, text[s:e]))
                decoy_hits += "decoy" in (row.get("note") or "")
        for kind, s, e in gold:
            totals[kind]["gold"] += 1
            if any(k == kind and ps < e and s < pe for k, ps, pe in pred):
                totals[kind]["found"] += 1
            else:
                misses.append((row["id"], kind, text[s:e]))
    print(f"{len(rows)} labelled lines ({sum('decoy' in (r.get('note') or '') for r in rows)} with decoys)")
    out = {}
    for kind, t in totals.items():
        p = t["tp"] / t["pred"] if t["pred"] else 1.0
        r = t["found"] / t["gold"] if t["gold"] else 1.0
        out[kind] = (p, r)
        print(f"  {kind:<8} precision {p:.3f} ({t['tp']}/{t['pred']}, {t['exact']} exact)  recall {r:.3f} "
              f"({t['found']}/{t['gold']})  F1 {2 * p * r / (p + r) if p + r else 0:.3f}")
    print(f"  false detections on decoy lines: {decoy_hits}")
    for label, items in (("false detections", false), ("missed", misses)):
        print(f"{label} ({len(items)}):")
        for rid, kind, span in items[:40]:
            print(f"  {rid} {kind}: {span!r}")
    print(f"RESULT pii_names person_p={out['person'][0]:.3f} person_r={out['person'][1]:.3f} "
          f"address_p={out['address'][0]:.3f} address_r={out['address'][1]:.3f}")


if __name__ == "__main__":
    main()
