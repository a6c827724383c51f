"""Benchmark: synth's near-dedup index vs datasketch MinHashLSH, same documents, one run.

Synthetic documents (random words) with planted near-duplicates (a copy with one word
substituted, inserted or deleted). Each method streams the documents in order: MinHash,
query the index, confirm candidates by estimated Jaccard >= threshold, insert. Both use
the same 5-word shingles, 128 permutations and threshold 0.8; datasketch its fastest path
(update_batch) with shingles normalised and joined in Python; synth its filter's path
(numpy shingling and one-permutation MinHash, synth.minhash, blocks of 1,024 documents).
The RESULT ratio is end to end from raw text; the index-only figure (shingles or signatures
made beforehand, untimed: "LSH insert + query" as reference figures measure it) is printed
too. Precision and recall are measured on the planted pairs. Needs datasketch.

    python bench/dedup.py [--docs 100000] [--dup-rate 0.1]

Last line: RESULT dedup ratio=<synth/datasketch docs/s, end to end> index_ratio=<index only> f1_delta=<synth F1 - datasketch F1>
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

THRESHOLD, NUM_PERM, SHINGLE = 0.8, 128, 5


def make_corpus(n: int, dup_rate: float, seed: int = 0) -> tuple[list[str], set[tuple[int, int]]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    docs: list[str] = []
    planted: set[tuple[int, int]] = set()
    while len(docs) < n:
        if docs and rng.random() < dup_rate:
            src = rng.randrange(len(docs))
            words = docs[src].split()
            op, pos = rng.choice(("sub", "ins", "del")), rng.randrange(len(words))
            if op == "sub":
                words[pos] = rng.choice(vocab)
            elif op == "ins":
                words.insert(pos, rng.choice(vocab))
            else:
                del words[pos]
            planted.add((src, len(docs)))
            docs.append(" ".join(words))
        else:
            docs.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(80, 200))))
    return docs, planted


def shingles(text: str, n: int) -> list[str]:
    """Word n-grams of the normalised text, joined in Python (as datasketch users do)."""
    from synth.minhash import normalise

    words = normalise(text).split()
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(gram) for gram in zip(*(words[i:] for i in range(n)), strict=False)]


def run_synth(docs: list[str], signed: bool) -> tuple[float, set[tuple[int, int]]]:
    """synth's NearIndex in the near_dedup filter's blocks; from raw text, or (signed) from
    signatures made beforehand."""
    from synth.filters.dedup import BLOCK, NearIndex

    index = NearIndex(THRESHOLD, SHINGLE, NUM_PERM, None, 42)
    sig = index.signer.sign(docs) if signed else None
    found = set()
    t = time.perf_counter()
    for start in range(0, len(docs), BLOCK):
        keys = [str(i) for i in range(start, min(start + BLOCK, len(docs)))]
        if sig is None:
            matches = index.add_many(keys, docs[start : start + BLOCK])
        else:
            matches = index.add_signed(keys, sig[start : start + BLOCK])
        for key, match in zip(keys, matches, strict=True):
            if match:
                found.add((int(match[0]), int(key)))
    return len(docs) / (time.perf_counter() - t), found


def run_datasketch(docs: list[str], pre: list[list[bytes]] | None) -> tuple[float, set[tuple[int, int]]]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    hashes = {}
    found = set()
    t = time.perf_counter()
    for i, doc in enumerate(docs):
        m = MinHash(num_perm=NUM_PERM, seed=42)
        m.update_batch([s.encode() for s in shingles(doc, SHINGLE)] if pre is None else pre[i])
        best = None
        for key in lsh.query(m):
            sim = m.jaccard(hashes[key])
            if sim >= THRESHOLD and (best is None or sim > best[1]):
                best = (key, sim)
        if best:
            found.add((best[0], i))
        else:
            lsh.insert(i, m)
            hashes[i] = m
    return len(docs) / (time.perf_counter() - t), found


def f1(found: set[tuple[int, int]], planted: set[tuple[int, int]], n: int) -> tuple[float, float, float]:
    # A copy of a copy is matched to whichever earlier member of its cluster is indexed; count
    # a found pair as right when both documents belong to the same planted cluster.
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in planted:
        parent[root(b)] = root(a)
    true_pos = sum(1 for a, b in found if root(a) == root(b))
    precision = true_pos / len(found) if found else 1.0
    dup_docs = {b for _, b in planted}
    recall = len({b for a, b in found if root(a) == root(b)} & dup_docs) / len(dup_docs) if dup_docs else 1.0
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--dup-rate", type=float, default=0.1)
    args = ap.parse_args()
    try:
        __import__("datasketch")
    except ImportError:
        sys.exit("bench/dedup.py needs datasketch: pip install 'stillhouse[bench]'")
    docs, planted = make_corpus(args.docs, args.dup_rate)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(docs):,} documents, {len(planted):,} planted near-duplicates")
    # Index speed (what the reference figures measure: "LSH insert + query"): shingles (and
    # synth's signatures) are built beforehand, untimed.
    pre_bytes = [[s.encode() for s in shingles(d, SHINGLE)] for d in docs]
    s_rate, s_found = run_synth(docs, signed=True)
    d_rate, d_found = run_datasketch(docs, pre_bytes)
    print("index only (made beforehand: datasketch's shingles; synth's signatures):")
    print(f"  synth near-dedup:      {s_rate:,.0f} docs/s")
    print(f"  datasketch MinHashLSH: {d_rate:,.0f} docs/s (ratio {s_rate / d_rate:.2f})")
    # End to end from raw text: normalising and shingling included for both.
    e_s, e_found = run_synth(docs, signed=False)
    e_d, e_dfound = run_datasketch(docs, None)
    sp, sr, sf = f1(e_found, planted, len(docs))
    dp, dr, df = f1(e_dfound, planted, len(docs))
    print("end to end from raw text:")
    print(f"  synth near-dedup:      {e_s:,.0f} docs/s  precision {sp:.4f} recall {sr:.4f} F1 {sf:.4f}")
    print(f"  datasketch MinHashLSH: {e_d:,.0f} docs/s  precision {dp:.4f} recall {dr:.4f} F1 {df:.4f}")
    print(f"RESULT dedup ratio={e_s / e_d:.2f} index_ratio={s_rate / d_rate:.2f} f1_delta={sf - df:+.4f}")


if __name__ == "__main__":
    main()
