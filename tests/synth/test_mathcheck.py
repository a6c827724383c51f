"""The `math` verifier (synth.mathcheck, Hugging Face's math-verify) on real answers, and as a
best_of_n ranker."""

import threading

from synth.mathcheck import correct


def _rec(text: str, **fields) -> dict:
    return {"id": "r", "seed": {"fields": fields},
            "messages": [{"role": "user", "content": "Solve."}, {"role": "assistant", "content": text}]}


def test_equal_results_in_different_forms_pass():
    assert correct(_rec("Halving gives \\boxed{0.5}.", answer="1/2")) == (True, None)
    assert correct(_rec("So $x = \\frac{3}{4}$.", answer="0.75"))[0]
    assert correct(_rec("The roots are $\\{1, 2\\}$", answer="$\\{2, 1\\}$"))[0]
    assert correct(_rec("Final: $2\\sqrt{2}$", solution="We get $\\sqrt{8}$, so \\boxed{\\sqrt{8}}"))[0]


def test_wrong_or_missing_results_fail_with_the_reason():
    ok, why = correct(_rec("The result is $4$.", answer="3"))
    assert not ok and why == "expected 3, got 4"
    assert correct(_rec("I am not sure.", answer="3")) == (False, "no mathematical result found in the answer")
    assert correct(_rec("$3$"))[1].startswith("the seed has no reference result")


def test_it_runs_outside_the_main_thread():
    # math-verify's default timeouts use SIGALRM (main thread only); curation calls verifiers from threads
    out = []
    t = threading.Thread(target=lambda: out.append(correct(_rec("\\boxed{7}", answer="7"))))
    t.start()
    t.join()
    assert out == [(True, None)]


def test_as_a_best_of_n_ranker(tmp_path):
    from synth.filters import build_filter

    samples = [dict(_rec(a, answer="12"), id=f"s{i}", sample_index=i) for i, a in enumerate(["$11$", "\\boxed{12}", "$13$"])]
    for s in samples:
        s["messages"][0]["content"] = "What is 3 * 4?"
    f = build_filter({"name": "best_of_n", "function": "synth.mathcheck:correct"}, 0)
    f.prepare(samples, tmp_path)
    assert [f.check(s) is None for s in samples] == [False, True, False]
