"""Request ids: stable when nothing changes, different when anything that shapes the answer does."""

import shutil

import pytest

from synth.backends.vllm_engine import VllmBackend
from synth.config import load_recipe
from synth.fingerprint import fingerprint_dir
from synth.plan import resolve

from conftest import make_recipe

TEACHER = {"backend": "vllm", "model": "m", "revision": None, "fingerprint": "f", "dtype": "auto", "quantization": None}


def _ids(tmp_path, overrides=(), teacher=TEACHER, **kw):
    recipe = load_recipe(make_recipe(tmp_path, "unused-model", **kw), list(overrides))
    return [r.id for r in resolve(recipe, teacher).requests.requests]


def test_ids_are_stable_across_plans(tmp_path):
    a = _ids(tmp_path)
    b = _ids(tmp_path)
    assert a == b and len(a) == 12 and len(set(a)) == 12  # 6 seeds x n=2


@pytest.mark.parametrize(
    "override",
    [
        "sampling.temperature=0.3",
        "sampling.top_p=0.5",
        "sampling.top_k=20",
        "sampling.max_tokens=9",
        "sampling.seed=8",
        "sampling.stop=[END]",
        "template.variables.team=ops",  # unused by the template: the chat is identical...
    ],
)
def test_each_sampling_field_changes_every_id(tmp_path, override):
    base = _ids(tmp_path)
    changed = _ids(tmp_path, [override])
    if override.startswith("template.variables"):
        assert changed == base  # ...so the ids stay: nothing the teacher sees changed
    else:
        assert not set(base) & set(changed)


def test_system_prompt_and_template_text_change_ids(tmp_path):
    base = _ids(tmp_path)
    other_system = _ids(tmp_path, template="{% block system %}Be verbose.{% endblock %}{% block user %}{{ question }}{% endblock %}")
    other_user = _ids(tmp_path, template="{% block system %}You are a terse assistant.{% endblock %}{% block user %}Q: {{ question }}{% endblock %}")
    assert not set(base) & set(other_system)
    assert not set(base) & set(other_user)


def test_seed_row_change_touches_only_its_requests(tmp_path):
    seeds = [{"question": f"q{i}"} for i in range(4)]
    base = _ids(tmp_path, seeds=seeds)
    seeds[2] = {"question": "q2 edited"}
    edited = _ids(tmp_path, seeds=seeds)
    assert base[:4] == edited[:4] and base[6:] == edited[6:]
    assert not set(base[4:6]) & set(edited[4:6])


def test_seed_fields_unused_by_template_still_count(tmp_path):
    a = _ids(tmp_path, seeds=[{"question": "q", "label": "x"}])
    b = _ids(tmp_path, seeds=[{"question": "q", "label": "y"}])
    assert not set(a) & set(b)


def test_sample_index_and_n(tmp_path):
    two = _ids(tmp_path)
    three = _ids(tmp_path, ["sampling.n=3"])
    # Raising n keeps the first two samples of each prompt and adds one.
    assert set(two) < set(three) and len(three) == 18


def test_reordering_seeds_keeps_ids_and_duplicates_collapse(tmp_path):
    seeds = [{"question": f"q{i}"} for i in range(3)]
    a = set(_ids(tmp_path, seeds=seeds))
    b = set(_ids(tmp_path, seeds=list(reversed(seeds))))
    assert a == b
    recipe = load_recipe(make_recipe(tmp_path, "m", seeds=seeds + [seeds[0]]))
    plan = resolve(recipe, TEACHER).requests
    assert len(plan.requests) == 6 and plan.duplicates == 2


def test_teacher_identity_changes_ids(tmp_path):
    base = _ids(tmp_path)
    for key, value in [("model", "m2"), ("revision", "abc"), ("fingerprint", "g"), ("dtype", "bfloat16")]:
        assert not set(base) & set(_ids(tmp_path, teacher={**TEACHER, key: value})), key


def test_weights_fingerprint_follows_model_files(tmp_path, tiny_model):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert fingerprint_dir(copy) == fingerprint_dir(tiny_model)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of new weights
    weights.write_bytes(bytes(data))
    assert fingerprint_dir(copy) != fingerprint_dir(tiny_model)
    tpl = copy / "chat_template.jinja"
    tpl.write_text(tpl.read_text() + " ")
    recipe_a = load_recipe(make_recipe(tmp_path, tiny_model))
    recipe_b = load_recipe(make_recipe(tmp_path, copy))
    ids_a = {r.id for r in resolve(recipe_a).requests.requests}
    ids_b = {r.id for r in resolve(recipe_b).requests.requests}
    assert not ids_a & ids_b


def test_model_path_that_does_not_exist(tmp_path):
    recipe = load_recipe(make_recipe(tmp_path, tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match=r"teacher.model: .*no-such-model does not exist"):
        VllmBackend.identity_for(recipe.teacher)
    (tmp_path / "empty").mkdir()
    recipe = load_recipe(make_recipe(tmp_path, tmp_path / "empty"))
    with pytest.raises(ValueError, match="is not a model directory"):
        VllmBackend.identity_for(recipe.teacher)
