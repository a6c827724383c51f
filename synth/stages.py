"""Stage keys: what each stage's work depends on, declared in one place.

A key is a small dict of the inputs a stage reads, as digests and config values. A keyed
stage writes the key it finished with (its stamp) as the last step of its work; `synth run`
skips it when the key of what it would read now is the same and its outputs exist, and
otherwise says which inputs changed. The keyed stages:

- curate: the raw log's bytes; the size of the logprobs sidecar when there is one (its counts
  go into stats.json); which requests the recipe plans (the prompt rows, the
  template, the teacher's identity, sampling, the conversation and tool settings) when
  curate.only_planned; the curate section;
  what the filters read besides their options (eval sets, schema files, the verifier's source
  file, the judge's template and identity, tokenizers and embedders).
- train: the training data's bytes; the student base model (a local directory by its
  fingerprint); the sft keys that change the weights (declared `stage="train"` in
  sft.config: model, lora, lengths, packing, steps, batch, learning rate, seed, ...); a
  chat template file; with sft.distill, the teacher's logprobs file (topk_kl) or the teacher
  model (on_policy). Not: logging and checkpoint cadence, eval keys, the eval data.
  Checkpoints carry this key too: training resumes only from checkpoints of the same key.
- eval: the trained weights (a fingerprint of adapter/ or model/), the student base, the
  held-out data's bytes, the sft keys declared `stage="eval"` (eval_engine,
  eval_max_new_tokens, eval_limit, eval_judge, eval_verifier, max_length, model), the judge
  file and the verifier's source file.

Expand and generate are keyed item by item (every teacher call has a request id, a hash of
all it depends on; the logs are the cache), so they always run and send only what is
missing. The card is rebuilt from the files every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.config import Recipe
from synth.configtools import canonical_dict, stage_fields
from synth.fingerprint import fingerprint_dir, model_identity, path_digest
from synth.runtime import file_sha256, read_json, utc_now, write_json_atomically


def curate_key(recipe: Recipe) -> dict[str, Any]:
    from synth.backends import load_backend_class
    from synth.filters import filter_inputs

    cfg = recipe.curate
    key: dict[str, Any] = {
        "raw": file_sha256(recipe.layout.raw),
        "curate": {k: v for k, v in canonical_dict(cfg).items() if k != "checkpoint_s"},  # how often, not what
        "filters": [filter_inputs(spec, i) for i, spec in enumerate(cfg.filters)],
    }
    if recipe.layout.logprobs.exists():  # counted in stats.json and the card; append-only, so its size
        key["logprobs"] = recipe.layout.logprobs.stat().st_size  # says when `synth score` added to it
    if cfg.only_planned:
        prompts, template = recipe.prompts, recipe.template
        key["requests"] = canonical_dict({
            "prompts": {**canonical_dict(prompts), "data": path_digest(Path(prompts.path))},
            "template": {**canonical_dict(template), "source": file_sha256(Path(template.path)),
                         "fewshot": file_sha256(Path(template.fewshot)) if template.fewshot else None},
            "teacher": load_backend_class(recipe.teacher.backend).identity_for(recipe.teacher),
            "sampling": recipe.sampling,
        })
        if recipe.driven:  # conversations and tools: their settings are in every planned id
            from synth.conversation import settings_identity

            teacher = key["requests"]["teacher"]
            key["requests"]["conversation"] = canonical_dict(settings_identity(recipe, teacher))
    return key


def train_key(recipe: Recipe) -> dict[str, Any]:
    from sft.config import sft_of

    cfg = sft_of(recipe)
    key = {
        "train_data": file_sha256(cfg.train_path(recipe.layout)),
        "student": model_identity(cfg.model),
        "chat_template": file_sha256(Path(cfg.chat_template)) if cfg.chat_template else None,
        "sft": stage_fields(cfg, "train"),
    }
    if cfg.reasoning == "keep":  # the tags a trace is written between when the template ignores it
        key["reasoning_tags"] = [recipe.teacher.reasoning.open_tag, recipe.teacher.reasoning.close_tag]
    if cfg.on_policy:
        key["teacher"] = model_identity(cfg.distill.teacher_model(recipe))
    elif cfg.distill is not None:
        key["teacher_logprobs"] = file_sha256(cfg.distill.path(recipe.layout))
    return key


def eval_key(recipe: Recipe) -> dict[str, Any]:
    from sft.config import sft_of
    from synth.filters.verifier import function_source_sha

    cfg = sft_of(recipe)
    eval_path = cfg.eval_path(recipe.layout)
    trained = cfg.student(recipe.layout).trained
    return {
        "weights": fingerprint_dir(trained) if trained.is_dir() else None,
        "eval_data": file_sha256(eval_path) if eval_path else None,
        "student": model_identity(cfg.model),
        "judge": file_sha256(Path(cfg.eval_judge)) if cfg.eval_judge else None,
        "verifier": function_source_sha(cfg.eval_verifier) if cfg.eval_verifier else None,
        "sft": stage_fields(cfg, "eval"),
    }


def pairs_key(recipe: Recipe) -> dict[str, Any]:
    """What `synth pairs` reads: the curated files, the pairs settings, the ranking filter's
    inputs and, for student pairs, the trained student's weights."""
    from synth.filters import entries_named, filter_inputs

    layout, cfg = recipe.layout, recipe.pair_options
    ranking = [filter_inputs(spec, i) for spec, i in entries_named(recipe.curate.filters, "best_of_n")]
    key: dict[str, Any] = {"train": file_sha256(layout.train), "rejected": file_sha256(layout.rejected),
                           "pairs": canonical_dict(cfg), "ranking": ranking}
    if "student" in cfg.sources and recipe.sft is not None:
        trained = recipe.sft.student(layout).trained
        key["student"] = fingerprint_dir(trained) if trained.is_dir() else None
    return key


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The key a stage last finished with, or None."""
    data = read_json(path)
    return data.get("key") if isinstance(data, dict) else None


def write_stamp(path: Path, key: dict[str, Any]) -> None:
    """Record that a stage finished with `key` (its last write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, {"key": key, "finished_at": utc_now()})


def changed(old: dict[str, Any] | None, new: dict[str, Any], prefix: str = "") -> list[str]:
    """The inputs whose value differs, as dotted names (config keys down to the field)."""
    if old is None:
        return []
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        where = f"{prefix}{name}"
        if isinstance(a, dict) and isinstance(b, dict) and name in ("sft", "curate", "lora"):
            out += changed(a, b, where + ".") or [where]
        else:
            out.append(where)
    return out


def why_run(old: dict[str, Any] | None, new: dict[str, Any], outputs_exist: bool) -> str | None:
    """Why a keyed stage must run, or None when its earlier work is still valid."""
    if old is None:
        return "no earlier run finished"
    diff = changed(old, new)
    if diff:
        return "changed: " + ", ".join(diff)
    if not outputs_exist:
        return "outputs missing"
    return None
