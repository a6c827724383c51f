"""The resolved plan: a recipe turned, once per command, into what every stage reads.

synth.config checks the recipe's keys. `resolve` does the rest, once per command:
- the curation filters' options (checked against each filter's dataclass), the tools
  (definitions and functions) and the eval verifier, before anything starts;
- the teacher's identity (what goes into request ids; for a local model a fingerprint of its
  weights), computed at most once, when first needed, and the user simulator's;
- the dataset version: output.dir pointed at this teacher's version (synth.versions);
- the layout of the output dir and the students' files (the SFT student, the DPO student);
- the planned requests and their ids, computed when a stage first needs them.
Every command builds one Plan and hands it to each stage it runs (synth.stage); no stage
derives any of this again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from sft.config import SftConfig
from synth.backends import teacher_identity
from synth.config import Recipe, TeacherConfig, load_recipe
from synth.configtools import to_dict
from synth.filters import Filter, filter_class, parse_spec, validate_spec
from synth.filters.verifier import function_source_sha, load_function
from synth.layout import StudentLayout
from synth.requests import Request, request_id, sample_sampling
from synth.runtime import canonical_json, file_sha256
from synth.seeds import load_seeds
from synth.templates import PromptTemplate
from synth.tools import Toolbox, check_tools
from synth.versions import resolve_version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilterEntry:
    """One entry of curate.filters, its options checked (nothing loaded or called yet)."""

    name: str
    index: int
    options: Any  # the filter's Options dataclass

    @property
    def where(self) -> str:
        return f"curate.filters[{self.index}]"

    def build(self) -> Filter:
        """A new filter for this entry (loading what it needs: indexes, models)."""
        return filter_class(self.name)(self.options, self.where)

    def inputs(self) -> dict[str, Any]:
        """What the filter depends on besides its options (files, models), for stage keys."""
        return filter_class(self.name).inputs(self.options)


@dataclass(frozen=True)
class Student:
    """A student to train or evaluate: its sft settings and its files."""

    cfg: SftConfig
    files: StudentLayout
    label: str  # "student", "DPO student"


@dataclass
class RequestPlan:
    """Every request the recipe asks for, in seed order."""

    requests: list[Request]
    duplicates: int = 0  # identical requests collapsed into one (duplicate seed rows)


def conversation_id(first_request_id: str, settings: dict[str, Any]) -> str:
    """A conversation's record id: its first request's id combined with the settings."""
    payload = canonical_json({"first": first_request_id, "conversation": settings})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


class Plan:
    """A recipe resolved for one command (see the module docstring). Build it with
    `resolve(recipe)` or `load_plan(path, overrides)`."""

    def __init__(self, recipe: Recipe, teacher: dict[str, Any] | None = None, versioned: bool = True):
        if teacher is not None:
            self.__dict__["teacher"] = teacher  # given: the cached_property is not computed
        self._identities: dict[str, dict[str, Any]] = {}
        self.filters = [_filter_entry(spec, i) for i, spec in enumerate(recipe.curate.filters)]
        self.toolbox = _toolbox(recipe)
        if recipe.sft is not None and recipe.sft.eval_verifier is not None:
            load_function(recipe.sft.eval_verifier, "sft.eval_verifier")
        self.recipe = recipe
        if versioned and recipe.output.version_by_teacher:
            base = Path(recipe.output.dir)
            version = resolve_version(base, lambda: self.teacher)
            if version != base:
                self.recipe = dataclasses.replace(recipe, output=dataclasses.replace(recipe.output, dir=str(version)))
        self.layout = self.recipe.layout

    # ---- teachers -------------------------------------------------------------------------

    @cached_property
    def teacher(self) -> dict[str, Any]:
        """The recipe teacher's identity (in every request id)."""
        return teacher_identity(self.recipe.teacher)

    def known_teacher(self, identity: dict[str, Any]) -> None:
        """Take the identity of a running teacher (a caller's backend) instead of computing it;
        an error when the plan's teacher is known and differs."""
        known = self.__dict__.get("teacher")
        if known is None:
            self.__dict__["teacher"] = identity
        elif known != identity:
            raise ValueError(f"teacher: the running backend ({identity.get('model')}) is not the recipe's teacher "
                             f"({known.get('model')}); start the recipe's teacher or let the command start it")

    def identity_of(self, teacher: TeacherConfig) -> dict[str, Any]:
        """The identity of another model the recipe names (the user simulator), once each."""
        if teacher == self.recipe.teacher:
            return self.teacher
        key = canonical_json(to_dict(teacher))
        if key not in self._identities:
            self._identities[key] = teacher_identity(teacher)
        return self._identities[key]

    @cached_property
    def user_identity(self) -> dict[str, Any]:
        """The identity of the model that plays the user of multi-turn conversations."""
        c = self.recipe.conversation
        return self.teacher if c is None or c.user_teacher is None else self.identity_of(c.user_teacher)

    @cached_property
    def conversation(self) -> dict[str, Any] | None:
        """What a conversation's record id holds besides its first request (None without
        conversations or tools): the settings, the simulator's identity, the tools."""
        recipe = self.recipe
        if not recipe.multi_call:
            return None
        c = recipe.conversation
        settings: dict[str, Any] = {"turns": 1}
        if recipe.multi_turn:
            settings = {"turns": c.turns, "user_template": file_sha256(c.user_template_path()),
                        "user": self.user_identity, "user_temperature": c.user_temperature,
                        "user_max_tokens": c.user_max_tokens, "stop": c.stop}
        if self.toolbox is not None:
            settings["tools"] = self.toolbox.identity()
        if recipe.repair is not None:
            r = recipe.repair
            settings["repair"] = {"rounds": r.rounds, "tests_field": r.tests_field, "language": r.language, "block": r.block,
                                  "template": file_sha256(r.template_path()), "limits": to_dict(r.limits),
                                  "harness": function_source_sha("synth.codeexec:run_tests")}
        return settings

    @property
    def batch_mode(self) -> bool:
        """Whether generation goes through the provider's batch API."""
        api = self.recipe.api_options
        return api is not None and api.batch

    # ---- requests -------------------------------------------------------------------------

    @cached_property
    def requests(self) -> RequestPlan:
        """Every request of the recipe, rendered (a bad seed or template fails here, before
        any model loads)."""
        return self._plan()

    @cached_property
    def request_ids(self) -> frozenset[str]:
        return frozenset(r.id for r in self.requests.requests)

    def _plan(self) -> RequestPlan:
        recipe = self.recipe
        if recipe.expand is not None and not self.layout.expanded.exists():
            raise ValueError(
                f"expand: the recipe expands its seeds and {self.layout.expanded} does not exist yet; "
                "run `synth expand RECIPE` first (`synth run RECIPE` does every stage in order)"
            )
        teacher, conversation = self.teacher, self.conversation
        template = PromptTemplate.load(recipe.template)
        base_sampling = recipe.sampling.identity()
        requests: list[Request] = []
        seen: set[str] = set()
        duplicates = 0
        for row in load_seeds(recipe.generation_seeds):
            messages = template.render(row.fields, where=f"{row.source} line {row.line}")
            for index in range(recipe.sampling.n):
                sampling = sample_sampling(base_sampling, index)
                rid = request_id(messages, row.fields, teacher, sampling, index)
                if conversation is not None:
                    rid = conversation_id(rid, conversation)
                if rid in seen:
                    duplicates += 1
                    continue
                seen.add(rid)
                requests.append(Request(id=rid, messages=messages, sampling=sampling, sample_index=index,
                                        seed=row.provenance(), template=template.provenance()))
        if duplicates:
            logger.warning("%d requests repeat earlier ones (duplicate seed rows); each is sent once", duplicates)
        return RequestPlan(requests, duplicates)

    # ---- curation -------------------------------------------------------------------------

    def filters_named(self, name: str) -> list[FilterEntry]:
        """The entries of curate.filters with this name, in order."""
        return [f for f in self.filters if f.name == name]

    # ---- students -------------------------------------------------------------------------

    @property
    def sft(self) -> SftConfig:
        """The recipe's sft section; an error naming the fix when it has none."""
        if self.recipe.sft is None:
            raise ValueError("sft: the recipe has no sft section; add one with at least sft.model (the student)")
        return self.recipe.sft

    @cached_property
    def student(self) -> Student:
        """The SFT student: sft.output_dir, or OUTPUT/student."""
        return Student(self.sft, self.sft.student(self.layout), "student")

    @cached_property
    def dpo_student(self) -> Student:
        """The DPO student (sft.dpo.output_dir, or STUDENT/dpo), as `sft eval` sees it: an
        adapter over the student's base, or over the fully fine-tuned SFT student."""
        cfg, sft_files = self.sft, self.student.files
        files = StudentLayout(Path(cfg.dpo.output_dir) if cfg.dpo.output_dir else sft_files.root / "dpo")
        changes: dict[str, Any] = {"output_dir": str(files.root)}
        if cfg.full_finetune:  # the adapter's base is the fully fine-tuned SFT student
            changes.update(model=str(sft_files.trained), full_finetune=False)
        return Student(dataclasses.replace(cfg, **changes), files, "DPO student")

    @property
    def pairs_file(self) -> Path:
        """The preference pairs DPO trains on: sft.dpo.pairs, or OUTPUT/pairs.jsonl."""
        return Path(self.sft.dpo.pairs) if self.sft.dpo.pairs else self.layout.pairs

    def on_policy_teacher(self) -> str:
        """on_policy: the model that scores the student's samples (sft.distill.teacher, or the
        recipe's local teacher); an error naming the fix when there is none."""
        recipe, distill = self.recipe, self.sft.distill
        if distill is not None and distill.teacher:
            return distill.teacher
        if recipe.teacher.backend != "vllm":
            raise ValueError(f"sft.distill.teacher: on_policy needs a teacher it can run in the training process, and "
                             f"the recipe's teacher is served over an API (teacher.backend: {recipe.teacher.backend}); "
                             "give sft.distill.teacher (an HF id or local directory sharing the student's tokenizer)")
        return recipe.teacher.model


def _filter_entry(spec: Any, index: int) -> FilterEntry:
    name, _ = parse_spec(spec, index)
    return FilterEntry(name, index, validate_spec(spec, index))


def _toolbox(recipe: Recipe) -> Toolbox | None:
    if recipe.tools is None:
        return None
    try:
        check_tools(recipe.tools)
    except ValueError as exc:
        raise ValueError(f"tools.{exc}") from None
    return Toolbox(recipe.tools)


def resolve(recipe: Recipe, teacher: dict[str, Any] | None = None, versioned: bool = True) -> Plan:
    """The plan of a validated recipe. `teacher`: the teacher's identity when known (a
    running backend's, or the one recorded in an output dir); `versioned=False` keeps
    output.dir as given (no dataset version is picked)."""
    return Plan(recipe, teacher, versioned)


def load_plan(path: str | Path, overrides: list[str] | None = None) -> Plan:
    """Load a recipe YAML (with `a.b=c` overrides) and resolve it: what every command does first."""
    return resolve(load_recipe(path, overrides))
