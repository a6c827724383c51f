"""Benchmark: decontamination recall on rephrased eval items, n-gram vs semantic.

bench/data/decontam_paraphrases.jsonl: 40 self-written instruction-following eval items,
5 rephrasings of each (word_swap: one or two words changed; reorder: constraints moved;
synonyms; translation: as if translated there and back; rewrite: in a user's own words,
the Yang et al. 2023 case) and 120 unrelated prompts of the same domains (32 of them hard
negatives: same topic and many shared words as one eval item, a different task). Each
prompt goes through the real filters as a record (`decontam`, 13- and 8-word n-grams;
`semantic_decontam` with the packaged all-MiniLM-L6-v2) and is counted caught or not:
recall by style on the rephrasings, false-positive rate on the unrelated prompts.

    python bench/decontam_semantic.py

Last line: RESULT decontam_semantic recall=<semantic, default threshold> fpr=<...> ngram13_recall=<...>
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "bench" / "data" / "decontam_paraphrases.jsonl"
STYLES = ("word_swap", "reorder", "synonyms", "translation", "rewrite")


def main() -> None:
    import torch

    from synth.filters import build_filter
    from synth.filters.decontam import SemanticDecontamOptions

    rows = [json.loads(line) for line in DATA.open()]
    evals = [r for r in rows if r["kind"] == "eval"]
    para = [r for r in rows if r["kind"] == "paraphrase"]
    unrelated = [r for r in rows if r["kind"] == "unrelated"]
    work = Path(tempfile.mkdtemp(prefix="bench-decontam-"))
    eval_path = work / "evals.jsonl"
    eval_path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in evals))
    eval_sets = [{"path": str(eval_path), "fields": ["text"]}]
    prompts = [r["text"] for r in para] + [r["text"] for r in unrelated]
    records = [{"id": str(i), "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": ""}]}
               for i, p in enumerate(prompts)]
    print(f"machine: {platform.machine()}; torch {torch.__version__}; {len(evals)} eval items, "
          f"{len(para)} rephrasings, {len(unrelated)} unrelated ({sum('near' in r for r in unrelated)} hard negatives)")

    def caught(spec: dict) -> tuple[list[bool], float]:
        f = build_filter(spec, 0)
        t = time.perf_counter()
        rejected: set[str] = set()
        for _ in f.apply(records, lambda rec, name, reason: rejected.add(rec["id"])):
            pass
        return [str(i) in rejected for i in range(len(records))], time.perf_counter() - t

    def report(label: str, hits: list[bool]) -> tuple[float, float]:
        p_hits, u_hits = hits[: len(para)], hits[len(para) :]
        by_style = {s: sum(h for h, r in zip(p_hits, para, strict=True) if r["style"] == s) / len(evals) for s in STYLES}
        hard = [h for h, r in zip(u_hits, unrelated, strict=True) if "near" in r]
        recall, fpr = sum(p_hits) / len(para), sum(u_hits) / len(unrelated)
        styles = " ".join(f"{s} {v:.2f}" for s, v in by_style.items())
        print(f"  {label:<32} recall {recall:.3f} ({styles})  FPR {fpr:.3f} (hard negatives {sum(hard)}/{len(hard)})")
        return recall, fpr

    ngram = {}
    for n in (13, 8):
        hits, dt = caught({"name": "decontam", "field": "prompt", "eval_sets": eval_sets, "n": n, "min_words": 4})
        ngram[n] = report(f"decontam n={n}", hits)
    default = SemanticDecontamOptions.__dataclass_fields__["threshold"].default
    results = {}
    for threshold in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9):
        hits, dt = caught({"name": "semantic_decontam", "eval_sets": eval_sets, "threshold": threshold})
        results[threshold] = report(f"semantic_decontam cos>={threshold}" + (" (default)" if threshold == default else ""), hits)
    print(f"  (semantic_decontam: {len(records) / dt:,.0f} records/s on this machine, embedding included)")
    recall, fpr = results[default]
    print(f"RESULT decontam_semantic recall={recall:.3f} fpr={fpr:.3f} ngram13_recall={ngram[13][0]:.3f}")


if __name__ == "__main__":
    main()
