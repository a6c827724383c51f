"""The compact near-dedup index (synth.minhash, synth.compact) and semantic decontamination.

Behaviour, not speed: signatures estimate Jaccard, a block decides exactly as one record at a
time would, the stores give back what went in, memory per record is what the docs state, and
rephrased eval items are caught by the packaged embedder (bench/ measures speed and recall).
"""

import json
import random

import numpy as np
import pytest

from synth.compact import Digests, Keys, Runs
from synth.filters import build_filter
from synth.filters.dedup import NearIndex
from synth.minhash import Signer, shingle_hashes

from conftest import HANG_S, write_jsonl

WORDS = [f"w{i}" for i in range(5000)]


def _text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def test_signatures_estimate_jaccard_and_are_deterministic():
    rng = random.Random(1)
    signer = Signer(128, 5, 42)
    for edits in (0, 1, 3, 10, 30):
        words = [f"u{i}" for i in range(150)]  # distinct words: the 5-gram Jaccard is exact arithmetic
        other = list(words)
        for pos in rng.sample(range(150), edits):
            other[pos] = f"x{pos}"
        a, b = set(zip(*(words[i:] for i in range(5)), strict=False)), set(zip(*(other[i:] for i in range(5)), strict=False))
        truth = len(a & b) / len(a | b)
        sig = signer.sign([" ".join(words), " ".join(other)])
        assert abs(float((sig[0] == sig[1]).mean()) - truth) < 0.12, (edits, truth)
    texts = [_text(rng, rng.randint(1, 60)) for _ in range(700)] + ["", "one", "Two words"]
    assert (Signer(128, 5, 42).sign(texts) == signer.sign(texts)).all()
    assert not (Signer(128, 5, 7).sign(texts[:5]) == signer.sign(texts[:5])).all()


def test_normalising_matches_for_ascii_and_unicode_text():
    # ASCII goes through a byte table, the rest through NFKC + casefold + regex: same words, same hashes
    a, _ = shingle_hashes(["Café au LAIT, s'il vous plaît!  Ｆｕｌｌｗｉｄｔｈ"], 2)
    b, _ = shingle_hashes(["café au lait s il vous plaît fullwidth"], 2)
    c, _ = shingle_hashes(["Hello,   WORLD... (again)_x"], 2)
    d, _ = shingle_hashes(["hello world again _x"], 2)
    assert (a == b).all() and (c == d).all()


def test_a_block_decides_as_one_record_at_a_time_would():
    rng = random.Random(2)
    texts = []
    for _ in range(3000):
        if texts and rng.random() < 0.3:  # a copy of a recent text with one word changed
            words = rng.choice(texts[-50:]).split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            texts.append(" ".join(words))
        else:
            texts.append(_text(rng, rng.randint(40, 80)))
    keys = [f"{i:032x}" for i in range(len(texts))]
    one = NearIndex(0.8, 3, 64, None, 0)
    single = [one.add(k, t) for k, t in zip(keys, texts, strict=True)]
    blocked = NearIndex(0.8, 3, 64, None, 0)
    many = []
    for start in range(0, len(texts), 700):
        many += blocked.add_many(keys[start : start + 700], texts[start : start + 700])
    assert many == single
    found = sum(m is not None for m in many)
    assert 700 < found < 1000  # about 30% planted; a one-word edit of 40-80 words is J >= 0.85
    assert len(blocked) == len(texts) - found
    # memory: 8 bytes a band and 16 for the id per indexed text (signatures on disk)
    assert blocked.nbytes == len(blocked) * (8 * blocked.num_bands + 16)
    linked = NearIndex(0.8, 3, 64, None, 0)
    assert linked.link_many(["a", "b", "c"], [texts[0], texts[0], "x y z"]) == [[], ["a"], []]


def test_runs_keys_and_digests_give_back_what_went_in():
    rng = np.random.default_rng(3)
    runs, truth = Runs(), {}
    for block in range(60):  # many adds: runs merge
        keys = rng.integers(0, 400, size=rng.integers(1, 50)).astype(np.uint32)
        values = np.arange(len(keys), dtype=np.uint32) + block * 100
        runs.add(keys, values)
        for k, v in zip(keys.tolist(), values.tolist(), strict=True):
            truth.setdefault(k, set()).add(v)
    assert len(runs.keys) <= 4 and len(runs) == sum(len(v) for v in truth.values())
    query = np.array([5, 7, 399, 5000, 5], np.uint32)
    pos, vals = runs.query(query)
    got = {}
    for p, v in zip(pos.tolist(), vals.tolist(), strict=True):
        got.setdefault(p, set()).add(v)
    assert got == {p: truth[int(k)] for p, k in enumerate(query.tolist()) if int(k) in truth}

    ids = Keys()
    values = [f"{i:032x}" for i in range(5)] + ["short-id", "ABCDEF" * 5 + "AB", "é" * 32]
    assert [ids.append(v) for v in values] == list(range(8))
    assert [ids[i] for i in range(8)] == values

    store = Digests(16)
    rows = rng.integers(0, 2**16, size=(10_000, 16)).astype(np.uint16)
    store.append(rows[:5000])
    store.append(rows[5000:])
    assert len(store) == 10_000
    for i in (0, 4095, 4096, 8191, 9999):  # from the file and from the buffer
        assert (store[i] == rows[i]).all()
    store.close()


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("evals") / "evals.jsonl"
    write_jsonl(path, [
        {"question": "Write a short poem about autumn leaves falling in a city park, in exactly three stanzas of four lines."},
        {"question": "A train leaves at 2:15 pm at 80 km/h; a second leaves at 3:00 pm at 100 km/h. When does it catch up?"},
        {"question": "Hi"},
    ])
    return path


def test_semantic_decontam_catches_a_rephrased_eval_item(eval_file):
    spec = {"name": "semantic_decontam", "eval_sets": [{"path": str(eval_file), "fields": ["question"]}], "threshold": 0.75}
    f = build_filter(spec, 3)
    assert f.stats["eval_items"] == 2  # "Hi" is under min_words
    records = [
        {"id": "a", "messages": [{"role": "user", "content": "Can you give me a little poem about leaves coming down in an "
                                  "urban park in the fall? Three stanzas, four lines each."}, {"role": "assistant", "content": "..."}]},
        {"id": "b", "messages": [{"role": "user", "content": "Explain how a bank reconciles its ledger at the end of the day."},
                                 {"role": "assistant", "content": "..."}]},
        {"id": "c", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ]
    rejected = []
    kept = [r["id"] for r in f.apply(records, lambda rec, name, reason: rejected.append((rec["id"], name, reason)))]
    assert kept == ["b", "c"] and f.rejected == 1
    rid, name, reason = rejected[0]
    assert (rid, name) == ("a", "semantic_decontam")
    assert reason.startswith("rephrases eval item evals.jsonl line 1 (cosine 0.") and "autumn leaves" in reason
    with pytest.raises(ValueError, match=r"curate.filters\[3\].eval_sets\[0\].fields: .* line 1 has no column 'prompt'"):
        build_filter({**spec, "eval_sets": [{"path": str(eval_file), "fields": ["prompt"]}]}, 3)


def test_curation_reads_ids_from_the_line_start_and_names_a_broken_line(tmp_path):
    from synth.curate import _index_raw

    raw = tmp_path / "raw.jsonl"
    lines = [json.dumps({"id": "b", "messages": []}), json.dumps({"messages": [], "id": "a"}),  # id not first: parsed
             json.dumps({"id": "c\\u0041", "x": 1}), ""]
    raw.write_text("\n".join(lines) + "\n")
    entries, skipped = _index_raw(raw, None)
    assert skipped == 0 and entries.lines.tolist() == [2, 1, 3]  # a, b, cA by id
    raw.write_text(lines[0] + "\n" + '{"oops": \n')
    with pytest.raises(ValueError, match=r"raw.jsonl line 2 is not a valid record"):
        _index_raw(raw, None)


def test_a_killed_curation_resumes_where_its_checkpoint_was(tmp_path):
    import sys

    import yaml

    from synth.curate import run_curate
    from synth.plan import load_plan

    from killing import sigkill_when

    rng = random.Random(4)
    rows, recent = [], []
    for i in range(100_000):  # short records, a tenth of them repeats or one-word edits
        if recent and rng.random() < 0.1:
            words = rng.choice(recent).split()
            if rng.random() < 0.5:
                words[rng.randrange(len(words))] = rng.choice(WORDS)
            answer = " ".join(words)
        else:
            answer = _text(rng, rng.randint(15, 30))
            recent = (recent + [answer])[-500:]
        rows.append(json.dumps({"id": f"{i * 7919 % 100_000:032x}", "messages": [
            {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": answer}], "finish_reason": "stop"}))
    (tmp_path / "t.j2").write_text("{{ prompt }}")
    (tmp_path / "s.txt").write_text("x\n")
    recipes = {}
    for name in ("killed", "clean"):
        out = tmp_path / name
        out.mkdir()
        (out / "raw.jsonl").write_text("\n".join(rows) + "\n")
        recipes[name] = tmp_path / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump({
            "seeds": {"path": str(tmp_path / "s.txt")}, "template": {"path": str(tmp_path / "t.j2")},
            "teacher": {"model": "org/unused"}, "output": {"dir": str(out)},
            "curate": {"only_planned": False, "checkpoint_s": 0, "filters": [
                "empty", {"name": "exact_dedup", "field": "answer"}, {"name": "near_dedup", "field": "answer", "shingle": 3}]}}))
    meta = tmp_path / "killed" / ".curate-checkpoint" / "meta.json"

    def past_two_checkpoints() -> bool:
        try:
            return json.loads(meta.read_text())["position"] >= 2 * 16_384
        except (OSError, ValueError):
            return False

    sigkill_when([sys.executable, "-m", "synth.cli", "curate", str(recipes["killed"]), "--no-progress"], past_two_checkpoints, HANG_S)
    assert not (tmp_path / "killed" / "train.jsonl").exists()
    resumed = run_curate(load_plan(recipes["killed"]), progress=False)
    clean = run_curate(load_plan(recipes["clean"]), progress=False)
    assert resumed["resumed_at"] >= 2 * 16_384 and "resumed_at" not in clean
    for name in ("train.jsonl", "rejected.jsonl", "stats.json"):  # as if never killed: nothing lost, nothing twice
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert resumed["rejected_by_filter"]["1:exact_dedup"] > 3000 and resumed["rejected_by_filter"]["2:near_dedup"] > 1000
    assert not (tmp_path / "killed" / ".curate-checkpoint").exists()
