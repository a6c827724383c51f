import dataclasses
from pathlib import Path

import pytest
import yaml

from synth.config import SamplingConfig, load_recipe, redacted
from synth.plan import resolve

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, data):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {
    "seeds": {"path": "s.jsonl"},
    "template": {"path": "t.j2"},
    "teacher": {"model": "org/model"},
    "output": {"dir": "out"},
}


def test_minimal_recipe_loads_with_defaults(tmp_path):
    r = load_recipe(_write(tmp_path, BASE))
    assert r.teacher.backend == "vllm"
    assert r.sampling.n == 1 and r.teacher.vllm.trust_remote_code is False
    assert r.seeds.format == "auto"


def test_overrides_parse_yaml_scalars(tmp_path):
    r = load_recipe(
        _write(tmp_path, BASE),
        ["sampling.temperature=0.2", "sampling.stop=[END, '###']", "teacher.vllm.max_model_len=4096",
         "sampling.top_k=null", "seeds.fields.question=text"],
    )
    assert r.sampling.temperature == 0.2
    assert r.sampling.stop == ["END", "###"]
    assert r.teacher.vllm.max_model_len == 4096
    assert r.seeds.fields == {"question": "text"}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("sampling.temprature=0.5", "sampling.temprature: unknown key. Did you mean 'temperature'?"),
        ("teacher.vllm.max_model_length=10", "Did you mean 'max_model_len'?"),
        ("sampler.n=2", "sampler: unknown key. Did you mean 'sampling'?"),
    ],
)
def test_unknown_key_suggests_closest(tmp_path, override, expected):
    with pytest.raises(ValueError, match="unknown key") as err:
        load_recipe(_write(tmp_path, BASE), [override])
    assert expected in str(err.value)


def test_unknown_key_in_yaml_file(tmp_path):
    data = {**BASE, "seeds": {"path": "s.jsonl", "feilds": {}}}
    with pytest.raises(ValueError, match=r"seeds.feilds: unknown key. Did you mean 'fields'\?"):
        load_recipe(_write(tmp_path, data))


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampling.temperature=-1", "sampling.temperature: must be >= 0"),
        ("sampling.top_p=0", "sampling.top_p: must be in (0, 1]"),
        ("sampling.top_p=1.5", "sampling.top_p: must be in (0, 1]"),
        ("sampling.n=0", "sampling.n: must be at least 1"),
        ("sampling.max_tokens=0", "sampling.max_tokens: must be at least 1"),
        ("sampling.top_k=0", "sampling.top_k: must be at least 1"),
        ("sampling.temperature=hot", "sampling.temperature: expected a number, got 'hot'"),
        ("sampling.n=2.5", "sampling.n: expected an integer"),
        ("teacher.vllm.gpu_memory_utilization=2", "teacher.vllm.gpu_memory_utilization: must be in (0, 1]"),
        ("teacher.vllm.trust_remote_code=yes please", "teacher.vllm.trust_remote_code: expected true or false"),
        ("seeds.format=xml", "seeds.format: unknown 'xml'"),
    ],
)
def test_invalid_values_name_the_field(tmp_path, override, message):
    with pytest.raises(ValueError) as err:
        load_recipe(_write(tmp_path, BASE), [override])
    assert message in str(err.value)


def test_unknown_backend_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"teacher.backend: unknown 'gpt'; valid backends: anthropic, openai, vllm"):
        load_recipe(_write(tmp_path, BASE), ["teacher.backend=gpt"])


def test_missing_required_section(tmp_path):
    data = {k: v for k, v in BASE.items() if k != "teacher"}
    with pytest.raises(ValueError, match="teacher: required key is missing"):
        load_recipe(_write(tmp_path, data))


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds:\n  path: [unclosed\n")
    with pytest.raises(ValueError, match=r"recipe: .*bad.yaml line \d+ is not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        load_recipe(_write(tmp_path, BASE), ["sampling.temperature"])


def test_sampling_identity_leaves_out_n_only_and_logprobs_when_off():
    ident = SamplingConfig().identity()
    names = {f.name for f in dataclasses.fields(SamplingConfig)}
    assert set(ident) == names - {"n", "logprobs"}, "ids of recipes without logprobs stay as they were"
    assert SamplingConfig(logprobs=5).identity()["logprobs"] == 5


@pytest.mark.parametrize("name", ["demo/recipe.yaml", "demo/api-recipe.yaml", "compliance/recipe.yaml"])
def test_example_recipes_are_valid(name):
    r = load_recipe(REPO / "prompts" / name)
    assert Path(r.seeds.path).is_file() and Path(r.template.path).is_file()
    teacher = {"backend": r.teacher.backend, "model": r.teacher.model}  # no model files needed to plan
    plan = resolve(r, teacher).requests
    assert len(plan.requests) == len(Path(r.seeds.path).read_text().splitlines()) * r.sampling.n - plan.duplicates


def test_saved_config_redacts_a_key_given_in_the_recipe(tmp_path):
    r = load_recipe(_write(tmp_path, BASE), ["teacher.backend=openai", "teacher.openai.api_key=sk-secret-123456789"])
    assert "sk-secret" not in yaml.safe_dump(redacted(r))
    assert r.teacher.openai.api_key == "sk-secret-123456789"  # still usable in memory
