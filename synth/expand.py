"""`synth expand`: grow a few dozen seed prompts into many with the teacher.

- self_instruct (Wang et al., 2022): each request shows k prompts sampled from the pool (seeds
  and, after the first round, generated ones) and asks for more; answers are parsed
  robustly (numbered, bulleted or "Task N:" lines), filtered (length, tasks a text model
  cannot do, e.g. images) and kept only when novel: ROUGE-L < `novelty` against every prompt
  in the pool (MinHash LSH instead once the pool is larger than `minhash_above`).
- document_qa: the seeds are document chunks (`synth ingest`); each request shows one chunk
  and asks for questions it answers (factual, procedural, "what should I do if ..."), kept
  when novel across the whole corpus; each question keeps its chunk as `context`, the
  chunk's provenance (`source`, `citation`) and, RAFT-style, `documents`: the chunk among
  other chunks (distractors) in a seeded order, for the answer template to show.
- evol_instruct (Xu et al., 2023): each pool prompt is rewritten in depth (add constraints,
  deepen, concretise, add reasoning) or in breadth (a new prompt of the same domain), and
  an evolution is eliminated when it brings no new information (ROUGE-L >= 0.9 with its
  source), copies the rewriting prompt's words, or is empty. The answer-side elimination
  rules (refusals, punctuation-only answers) are curation filters (refusal, empty).

Resumable like generation: every teacher call has a request id and its answer goes to
OUTPUT/expand_raw.jsonl as it arrives; the random choices are seeded, so a rerun rebuilds
the same requests and sends only those not answered yet. Output: OUTPUT/expanded.jsonl,
one {"prompt", "origin"} per line, seeds first; point seeds.path at it to generate.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

from synth.calls import CachedCalls
from synth.config import ExpandOptions
from synth.filters.dedup import NearIndex
from synth.layout import packaged_prompt
from synth.plan import Plan
from synth.rawlog import rewrite_atomically
from synth.requests import Request, request_id
from synth.seeds import load_seeds
from synth.stage import Stage, StageResult
from synth.templates import PromptTemplate
from synth.textmetrics import rouge_l

logger = logging.getLogger(__name__)
EVOL_DEPTH = ("constraints", "deepen", "concretize", "reasoning")
# Tasks a text-only model cannot do (the Self-Instruct paper's keyword filter).
BLOCKLIST = re.compile(r"\b(image|images|graph|graphs|picture|pictures|file|files|map|maps|draw|plot|go to|video|audio|flowchart|diagram)\b", re.IGNORECASE)
_ITEM = re.compile(r"^\s*(?:(?:task|instruction|prompt)\s*\d+\s*[:.)-]|\d+\s*[.):-]|[-*•])\s*(.+?)\s*$", re.IGNORECASE)
_COPY_MARKERS = ("given prompt", "rewritten prompt", "#rewritten", "prompt rewriter", "new prompt:", "#created prompt#")


def parse_items(text: str) -> list[str]:
    """Instructions from a teacher's list answer: numbered, bulleted or 'Task N:' lines."""
    items = []
    for line in text.splitlines():
        m = _ITEM.match(line)
        if m:
            item = m.group(1).strip().strip('"').strip()
            if item:
                items.append(item)
    return items


class NoveltyPool:
    """The prompts so far; `add` keeps a candidate only if it is novel against all of them."""

    def __init__(self, prompts: list[str], threshold: float, minhash_above: int):
        self.prompts = list(prompts)
        self.threshold, self.minhash_above = threshold, minhash_above
        self._index = None

    def _minhash(self):
        if self._index is None:
            self._index = NearIndex(self.threshold, 2, 128, None, 0)
            for i, p in enumerate(self.prompts):
                self._index.add(str(i), p)
        return self._index

    def add(self, candidate: str) -> bool:
        if len(self.prompts) > self.minhash_above:
            if self._minhash().add(str(len(self.prompts)), candidate) is not None:
                return False
        elif any(rouge_l(candidate, p) >= self.threshold for p in self.prompts):
            return False
        self.prompts.append(candidate)
        return True


def acceptable(prompt: str, o: ExpandOptions) -> str | None:
    """Why a candidate prompt is discarded, or None."""
    words = prompt.split()
    if not (o.min_words <= len(words) <= o.max_words):
        return "length"
    if BLOCKLIST.search(prompt):
        return "not a text task"
    if not prompt[0].isalnum():
        return "starts with punctuation"
    if any(marker in prompt.lower() for marker in _COPY_MARKERS):
        return "copies the rewriting prompt"
    return None


class _Caller:
    """Builds expansion requests and sends them through the recipe's teacher, cached in
    OUTPUT/expand_raw.jsonl."""

    def __init__(self, plan: Plan, o: ExpandOptions, backend: Any = None):
        self.options = o
        self.calls = CachedCalls(plan.recipe.teacher, plan.layout.expand_raw, backend, identity=plan.teacher)
        self.identity = self.calls.identity
        self.sampling = {"temperature": o.temperature, "top_p": 1.0, "top_k": None, "max_tokens": o.max_tokens,
                         "seed": o.seed, "stop": []}

    def request(self, template: PromptTemplate, fields: dict[str, Any], index: int) -> Request:
        messages = template.render(fields, where="expansion request")
        sampling = {**self.sampling, "seed": self.options.seed + index}
        rid = request_id(messages, fields, self.identity, sampling, index)
        return Request(rid, messages, sampling, index, {"source": "expand", "line": 0, "fields": {}}, template.provenance())

    def answer(self, requests: list[Request]) -> dict[str, str]:
        return self.calls.answer(requests)[0]

    def close(self) -> None:
        self.calls.close()


class Expand(Stage):
    """Grow the seeds into OUTPUT/expanded.jsonl (keyed item by item: every call has an id)."""

    name = "expand"
    always_runs = "sends only the calls not in expand_raw.jsonl (each call's id is its key)"

    def __init__(self, plan: Plan, progress: bool = True, backend: Any = None):
        super().__init__(plan, progress)
        self.backend = backend

    def why_not_applicable(self) -> str | None:
        return None if self.plan.recipe.expand is not None else "the recipe has no expand section"

    def work(self, key: dict[str, Any] | None) -> StageResult:
        r = _expand(self.plan, self.plan.recipe.expand, self.backend)
        lines = [f"synth expand: {r['seeds']} seeds -> {r['new']} new prompts ({r['calls_sent']} teacher calls sent, "
                 f"{r['calls_cached']} cached); discarded {r['discarded'] or 'none'}",
                 f"  output: {r['output']} (`synth generate` with this recipe reads it: every seed, then the new prompts)"]
        return self.result(f"{r['seeds']} seeds -> {r['new']} new prompts ({r['calls_sent']} calls sent)", lines, r)


def run_expand(plan: Plan, backend: Any = None) -> dict[str, Any]:
    """Grow the recipe's seeds into OUTPUT/expanded.jsonl (seeds first); returns counts."""
    if plan.recipe.expand is None:
        raise ValueError("expand: the recipe has no expand section; add one, e.g. expand: {method: self_instruct, target: 200}")
    return Expand(plan, backend=backend).run().details


def _expand(plan: Plan, o: ExpandOptions, backend: Any) -> dict[str, Any]:
    seeds = load_seeds(plan.recipe.seeds)
    column = "text" if o.method == "document_qa" else o.field
    missing = [s for s in seeds if not isinstance(s.fields.get(column), str)]
    if missing:
        if o.method == "document_qa":
            raise ValueError(f"seeds.path: {missing[0].source} line {missing[0].line} has no 'text' column; document_qa reads "
                             "the chunks `synth ingest DOCS --out chunks.jsonl` writes (seeds.path: chunks.jsonl)")
        raise ValueError(f"expand.field: {missing[0].source} line {missing[0].line} has no text column '{o.field}'; set expand.field")
    seed_prompts = [s.fields[column].strip() for s in seeds]
    caller = _Caller(plan, o, backend)
    rng = random.Random(o.seed)
    new: list[dict[str, Any]] = []
    discarded: dict[str, int] = {}
    methods = {"self_instruct": _self_instruct, "evol_instruct": _evol_instruct}
    try:
        if o.method in methods:
            methods[o.method](caller, o, rng, seed_prompts, new, discarded)
        else:
            _document_qa(caller, o, rng, [s.fields for s in seeds], new, discarded)
    finally:
        caller.close()
    out = plan.layout.expanded
    kept_seeds = [] if o.method == "document_qa" else [{"prompt": p, "origin": {"method": "seed"}} for p in seed_prompts]
    rewrite_atomically(out, kept_seeds + new)
    return {"seeds": len(seed_prompts), "new": len(new), "discarded": discarded, "calls_sent": caller.calls.sent,
            "calls_cached": len(caller.calls.answers) - caller.calls.sent, "output": str(out)}


def _consider(candidate: str, pool: NoveltyPool, o: ExpandOptions, discarded: dict[str, int]) -> bool:
    why = acceptable(candidate, o)
    if why is None and not pool.add(candidate):
        why = "not novel"
    if why:
        discarded[why] = discarded.get(why, 0) + 1
        return False
    return True


def _self_instruct(caller, o, rng, seeds, new, discarded) -> None:
    template = PromptTemplate.from_file(packaged_prompt("expand/self_instruct.j2"))
    pool = NoveltyPool(seeds, o.novelty, o.minhash_above)
    index = 0
    for round_no in range(o.rounds):
        if len(new) >= o.target:
            break
        requests = []
        for _ in range(o.requests_per_round):
            generated = [n["prompt"] for n in new]
            k_gen = min(o.generated_examples, len(generated))
            examples = rng.sample(seeds, min(o.examples - k_gen, len(seeds))) + rng.sample(generated, k_gen)
            requests.append(caller.request(template, {"examples": examples, "count": 8}, index))
            index += 1
        answers = caller.answer(requests)
        for req in requests:
            for item in parse_items(answers.get(req.id, "")):
                if len(new) < o.target and _consider(item, pool, o, discarded):
                    new.append({"prompt": item, "origin": {"method": "self_instruct", "round": round_no, "request": req.id}})
        logger.info("self-instruct round %d: %d new prompts so far", round_no, len(new))


KIND_TEXT = {"factual": "factual questions", "procedural": "procedural questions (how to do something)",
             "what_if": 'situational questions ("what should I do if ...")'}


def citation(source: dict[str, Any]) -> str:
    """How an answer names a chunk's source: "aml-policy.pdf, page 2" or "faq.md, section 'Accounts'"."""
    where = Path(str(source.get("file", "the document"))).name
    if source.get("page"):
        return f"{where}, page {source['page']}"
    if source.get("section"):
        return f"{where}, section '{source['section']}'"
    return where


def _source_of(chunk: dict[str, Any]) -> dict[str, Any]:
    return chunk["source"] if isinstance(chunk.get("source"), dict) else {}


def _document_qa(caller, o, rng, chunks: list[dict[str, Any]], new, discarded) -> None:
    """Questions each chunk answers (document_qa), novel across the whole corpus; each keeps
    its chunk (`context`), the chunk's provenance (`source`, `citation`) and `documents`: the
    chunk and `distractors` other chunks in a seeded order (RAFT), each with its citation."""
    template = PromptTemplate.from_file(packaged_prompt("expand/document_qa.j2"))
    pool = NoveltyPool([], o.novelty, o.minhash_above)
    kinds = [KIND_TEXT[k] for k in o.question_kinds]
    plans = []
    for index, chunk in enumerate(chunks):
        source = _source_of(chunk)
        fields = {"text": chunk["text"], "section": source.get("section") or "", "source": citation(source),
                  "count": o.questions_per_chunk, "kinds": kinds}
        plans.append((index, chunk, source, caller.request(template, fields, index)))
    answers = caller.answer([p[3] for p in plans])
    for index, chunk, source, req in plans:
        for question in parse_items(answers.get(req.id, ""))[: o.questions_per_chunk]:
            if len(new) >= o.target:
                return
            if _consider(question, pool, o, discarded):
                others = [j for j in range(len(chunks)) if j != index]
                shown = [index, *rng.sample(others, min(o.distractors, len(others)))]
                rng.shuffle(shown)  # the source among the distractors, at a seeded place
                documents = [{"text": chunks[j]["text"], "citation": citation(_source_of(chunks[j]))} for j in shown]
                new.append({"prompt": question, "context": chunk["text"],
                            "source": {**source, "chunk": chunk.get("id")}, "citation": citation(source),
                            "documents": documents,
                            "origin": {"method": "document_qa", "chunk": chunk.get("id"), "request": req.id}})
    logger.info("document_qa: %d questions from %d chunks", len(new), len(chunks))


def _evol_instruct(caller, o, rng, seeds, new, discarded) -> None:
    depth = PromptTemplate.from_file(packaged_prompt("expand/evol_in_depth.j2"))
    breadth = PromptTemplate.from_file(packaged_prompt("expand/evol_in_breadth.j2"))
    pool = NoveltyPool(seeds, o.novelty, o.minhash_above)
    current, index = list(seeds), 0
    for generation in range(o.rounds):
        plans = []
        for source in current:
            if rng.random() < o.breadth_share:
                plans.append((source, "breadth", caller.request(breadth, {"instruction": source}, index)))
            else:
                method = rng.choice(EVOL_DEPTH)
                plans.append((source, method, caller.request(depth, {"instruction": source, "method": method}, index)))
            index += 1
        answers = caller.answer([p[2] for p in plans])
        evolved = []
        for source, method, req in plans:
            text = answers.get(req.id, "").strip().strip('"').strip()
            if not text:
                discarded["empty"] = discarded.get("empty", 0) + 1
                continue
            if rouge_l(text, source) >= 0.9:  # WizardLM rule 1: no information gain
                discarded["no information gain"] = discarded.get("no information gain", 0) + 1
                continue
            if _consider(text, pool, o, discarded):
                new.append({"prompt": text, "origin": {"method": "evol_instruct", "operation": method,
                                                       "generation": generation, "from": source[:200], "request": req.id}})
                evolved.append(text)
        logger.info("evol-instruct generation %d: %d evolved", generation, len(evolved))
        if not evolved:
            break
        current = evolved
