"""Benchmark: precision and recall of the pii filter's `person` and `address` detectors.

Two labelled sets. bench/data/pii_world.jsonl (the one the RESULT line reports first): 220+
lines written apart from the rules, by someone who had not read them, with names from many
language regions, addresses from many countries and decoys. bench/data/pii_names.jsonl: self-written sentences (compliance documents, tickets, e-mails)
with every person name and postal address labelled, and decoys a naive detector flags
(product and company names, places in regulation names, version and section numbers).
A detected span counts as right when it overlaps a labelled span of the same type (and
"exact" when it is the same text, surrounding punctuation aside); recall counts the
labelled spans some detection of their type overlaps.

    python bench/pii_names.py [--detector DETECTOR.yaml]

With --detector (a YAML with a `teacher` block, as `pii.detector` takes: on a GPU, a real
teacher), the model detector is measured on the same lines instead of the rules: each line
goes to it through the pii filter (its calls cached under bench/.pii-detector/), and the
strings it lists are matched to the labelled spans the same way.

Last line: RESULT pii_names person_p=<..> person_r=<..> address_p=<..> address_r=<..> (pii_world)
  first_set_person_p=<..> ... (pii_names) [detector=<model>]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SETS = {"pii_names": REPO / "bench" / "data" / "pii_names.jsonl",  # the first set (174 lines)
        "pii_world": REPO / "bench" / "data" / "pii_world.jsonl"}  # written later, apart from the rules (220+ lines)


def detector_spans(rows: list[dict], spec_path: str) -> dict[str, list[tuple[str, int, int]]]:
    """(type, start, end) of every string the model detector lists, found in its line."""
    import yaml

    from synth.filters import build_filter

    detector = yaml.safe_load(Path(spec_path).read_text())
    f = build_filter({"name": "pii", "types": [], "detector": detector}, 0)
    records = [{"id": r["id"], "messages": [{"role": "user", "content": r["text"]}]} for r in rows]
    out_dir = REPO / "bench" / ".pii-detector"
    out_dir.mkdir(exist_ok=True)
    f.prepare(records, out_dir)
    spans: dict[str, list[tuple[str, int, int]]] = {}
    for r in rows:
        listed = f.listed.get(r["id"])
        found = []
        if isinstance(listed, dict):
            for kind, items in listed.items():
                for item in items:
                    at = r["text"].find(item)
                    found.append((kind, at, at + len(item)) if at >= 0 else (kind, -1, -1))  # -1: not in the text
        spans[r["id"]] = found
    print(f"detector calls: {f.stats}")
    return spans


def measure(rows: list[dict], predicted: dict[str, list[tuple[str, int, int]]]) -> dict[str, tuple[float, float]]:
    """Print precision and recall per type on `rows`; return {type: (precision, recall)}."""
    totals = {t: {"pred": 0, "tp": 0, "exact": 0, "gold": 0, "found": 0} for t in ("person", "address")}
    decoy_hits, misses, false = 0, [], []
    for row in rows:
        text = row["text"]
        gold = []
        for span in row["spans"]:
            start = text.index(span["text"])
            gold.append((span["type"], start, start + len(span["text"])))
        pred = predicted[row["id"]]
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
        for rid, kind, span in items[:60]:
            print(f"  {rid} {kind}: {span!r}")
    return out


def main() -> None:
    import argparse

    from synth.filters.pii_engine import find_spans

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", help="a YAML with a teacher block: measure the model detector instead of the rules")
    args = ap.parse_args()
    out = {}
    for label, path in SETS.items():
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        if args.detector:
            predicted = detector_spans(rows, args.detector)
        else:
            predicted = {r["id"]: find_spans(r["text"], ["person", "address"]) for r in rows}
        print(f"== {label}: {path.relative_to(REPO)}")
        out[label] = measure(rows, predicted)
    which = f" detector={args.detector}" if args.detector else ""
    first, world = out["pii_names"], out["pii_world"]
    print(f"RESULT pii_names person_p={world['person'][0]:.3f} person_r={world['person'][1]:.3f} "
          f"address_p={world['address'][0]:.3f} address_r={world['address'][1]:.3f} "
          f"first_set_person_p={first['person'][0]:.3f} first_set_person_r={first['person'][1]:.3f} "
          f"first_set_address_p={first['address'][0]:.3f} first_set_address_r={first['address'][1]:.3f}{which}")


if __name__ == "__main__":
    main()
