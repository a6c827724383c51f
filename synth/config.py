"""The recipe: what to generate, from which seeds, with which teacher, and where to write it.

A recipe is YAML with one section per dataclass below; `load_recipe` validates it and
applies `--set a.b=c` overrides. Relative paths are relative to the working directory.

This is the bottom layer: it imports nothing of stillhouse but the config helpers and the
output layout. What needs the registries or the files (filter options, tool functions, the
teacher's identity, the dataset version) is checked when synth.plan resolves the recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.config import ExportConfig, SftConfig
from synth.configtools import apply_overrides, from_dict, help_field, load_yaml, to_dict
from synth.layout import Layout, packaged_prompt

SEED_FORMATS = ("auto", "jsonl", "csv", "txt", "hf", "parquet")
# The teacher backends (synth.backends maps each name to its class).
BACKEND_NAMES = ("vllm", "openai", "anthropic")


@dataclass
class SeedsConfig:
    path: str = help_field(help="seed file or dataset: .jsonl, .csv, .txt (one prompt per line), a parquet file or a saved HF dataset dir")
    format: str = help_field("auto", help="one of auto, jsonl, csv, txt, hf, parquet; auto picks by extension")
    fields: dict[str, str] = help_field({}, help="template variable -> seed column; empty passes every column through under its own name")
    split: str = help_field("train", help="split to read when the HF dataset dir holds several")
    limit: int | None = help_field(None, help="read only the first N seed rows (for a quick trial)")

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: give the seed file, e.g. seeds.path=prompts/demo/seeds.jsonl")
        if self.format not in SEED_FORMATS:
            raise ValueError(f"format: unknown '{self.format}'; choose one of {', '.join(SEED_FORMATS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: must be at least 1, got {self.limit}")


@dataclass
class TemplateConfig:
    path: str = help_field(help="Jinja2 file with a `user` block and an optional `system` block (rendered in a sandbox)")
    fewshot: str | None = help_field(None, help="optional JSONL of few-shot turns, each line {\"user\": ..., \"assistant\": ...}")
    variables: dict[str, Any] = help_field({}, help="extra constants available to the template (e.g. a domain name)")

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: give the Jinja2 template, e.g. template.path=prompts/demo/answer.j2")


@dataclass
class SamplingConfig:
    n: int = help_field(1, help="samples per seed prompt; each sample is its own request and record")
    temperature: float = help_field(0.7, help="sampling temperature, 0 for greedy")
    top_p: float = help_field(1.0, help="nucleus sampling mass, in (0, 1]")
    top_k: int | None = help_field(None, help="sample from the k most likely tokens; none for no limit")
    max_tokens: int = help_field(512, help="most tokens the teacher writes per answer")
    seed: int | None = help_field(None, help="base random seed: each request is sampled with a seed drawn from it (plus the sample's index) and the request's id, so reruns are reproducible and no two prompts share their random draws")
    stop: list[str] = help_field([], help="strings that end the answer")
    logprobs: int = help_field(0, help="capture the teacher's top-k logprobs of every answer token (OUTPUT/logprobs.bin) for sft.distill; 0: off")

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n: must be at least 1, got {self.n}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k: must be at least 1 (or none for no limit), got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be at least 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop: stop strings must not be empty")
        if not (0 <= self.logprobs <= 64):
            raise ValueError(f"logprobs: must be between 0 (off) and 64, got {self.logprobs}")

    def identity(self) -> dict[str, Any]:
        """Everything here that changes the teacher's output (n only sets how many samples;
        logprobs only when on, so turning it on asks for answers with logprobs)."""
        out = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
        }
        if self.logprobs:
            out["logprobs"] = self.logprobs
        return out


@dataclass
class RayOptions:
    workers: int = help_field(0, help="0: the engine runs in this process; N: N Ray actors each hold one engine for the teacher, this process plans and writes the logs")
    address: str | None = help_field(None, help="the Ray cluster: auto (the one `ray start` made here), host:port or ray://host:10001; none starts a private local one on 127.0.0.1 for this run")
    cpus_per_worker: float = help_field(1.0, help="CPUs Ray reserves for each worker")
    gpus_per_worker: float | None = help_field(None, help="GPUs Ray gives each worker; none: tensor_parallel_size x pipeline_parallel_size on a GPU cluster, 0 without GPUs")
    max_retries: int = help_field(3, help="times a chunk of requests is resent after its worker died, before they are failures")

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers: must be 0 (in-process) or more, got {self.workers}")
        if self.cpus_per_worker < 0 or (self.gpus_per_worker is not None and self.gpus_per_worker < 0):
            raise ValueError("cpus_per_worker and gpus_per_worker: must be >= 0")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be >= 0, got {self.max_retries}")


@dataclass
class VllmConfig:
    dtype: str = help_field("auto", help="weights dtype: auto, bfloat16, float16, float32")
    max_model_len: int | None = help_field(None, help="context length; none takes the model's")
    tensor_parallel_size: int = help_field(1, help="GPUs to shard each layer of the teacher over (one node)")
    pipeline_parallel_size: int = help_field(1, help="stages to split the teacher's layers into (GPUs or nodes); with tensor_parallel_size, the GPUs one engine uses")
    gpu_memory_utilization: float = help_field(0.9, help="share of GPU memory for weights and KV cache (GPU only; on CPU kv_cache_gib sizes the cache)")
    kv_cache_gib: float | None = help_field(None, help="KV cache size in GiB; none: 0.5 on a CPU, gpu_memory_utilization's share on a GPU")
    enable_prefix_caching: bool | None = help_field(None, help="reuse KV cache across prompts with a shared prefix; none keeps vLLM's default")
    enforce_eager: bool = help_field(False, help="disable CUDA graphs / compilation (faster start, needed on CPU)")
    trust_remote_code: bool = help_field(False, help="run code shipped with the model; off unless you trust the model's source")
    quantization: str | None = help_field(None, help="quantization method passed to vLLM (e.g. awq, fp8)")
    max_num_seqs: int | None = help_field(None, help="most sequences the engine batches at once; none keeps vLLM's default")
    in_flight: int = help_field(1024, help="requests kept queued in the engine; finished ones are written as they complete")
    engine_kwargs: dict[str, Any] = help_field({}, help="further vllm.LLM keyword arguments, passed through unchanged")
    structured_outputs: dict[str, Any] | None = help_field(None, help="constrain every answer: {regex: ...}, {json: SCHEMA}, {choice: [...]} or {grammar: ...} (vLLM's StructuredOutputsParams); part of the request id")
    ray: RayOptions = help_field(default_factory=RayOptions, help="data parallelism: several engines on a Ray cluster (ray.workers > 0)")

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "bfloat16", "float16", "float32", "half", "float", "bf16"):
            raise ValueError(f"dtype: unknown '{self.dtype}'; choose auto, bfloat16, float16 or float32")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError(f"max_model_len: must be at least 16, got {self.max_model_len}")
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size and pipeline_parallel_size: must be at least 1, got "
                             f"{self.tensor_parallel_size} and {self.pipeline_parallel_size}")
        if self.structured_outputs is not None:
            kinds = {"regex", "json", "choice", "grammar", "json_object"}
            if not isinstance(self.structured_outputs, dict) or len(set(self.structured_outputs) & kinds) != 1:
                raise ValueError("structured_outputs: give exactly one of regex, json, choice, grammar or json_object, "
                                 "e.g. {regex: '[0-9]{4}-[0-9]{2}-[0-9]{2}'}")
        if "data_parallel_size" in self.engine_kwargs:
            raise ValueError("engine_kwargs.data_parallel_size: vLLM's offline engine does not run data parallel in one "
                             "process; set ray.workers (one engine per worker), or serve the teacher with "
                             "`vllm serve --data-parallel-size N` and use the openai backend")
        if not (0 < self.gpu_memory_utilization <= 1):
            raise ValueError(f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gib is not None and not (0 < self.kv_cache_gib < 4096):
            raise ValueError(f"kv_cache_gib: must be a size in GiB above 0, got {self.kv_cache_gib}")
        if self.in_flight < 1:
            raise ValueError(f"in_flight: must be at least 1, got {self.in_flight}")


@dataclass
class ApiOptions:
    """What every API teacher shares: the endpoint and key, flow control, retries, prices
    and batch mode. OpenAIConfig and AnthropicConfig add their own keys and defaults."""

    base_url: str | None = help_field(None, help="endpoint, e.g. http://127.0.0.1:8000/v1; none reads OPENAI_BASE_URL, else OpenAI's")
    api_key_env: str = help_field("OPENAI_API_KEY", help="environment variable that holds the API key (the key is never written anywhere)")
    api_key: str | None = help_field(None, help="the key itself, if it must be in the recipe; redacted in every saved config")
    max_concurrency: int = help_field(64, help="most requests in flight; adaptive concurrency backs off below this on 429/503")
    min_concurrency: int = help_field(1, help="adaptive concurrency never goes below this")
    rpm: float | None = help_field(None, help="requests per minute limit; none for no limit")
    tpm: float | None = help_field(None, help="tokens per minute limit (prompt estimate + max_tokens, reconciled with usage); none for no limit")
    burst: int | None = help_field(None, help="requests allowed at once above the rpm rate; none means one second's worth")
    timeout_s: float = help_field(120.0, help="per-request timeout in seconds")
    max_retries: int = help_field(6, help="retries after the first attempt, for 429, 5xx, connection errors, timeouts and malformed bodies")
    backoff_s: float = help_field(1.0, help="base of the exponential backoff with jitter between retries")
    backoff_max_s: float = help_field(60.0, help="longest backoff between two attempts (a longer Retry-After is still honoured)")
    extra_body: dict[str, Any] = help_field({}, help="extra request fields passed through (e.g. vLLM's repetition_penalty, min_p)")
    price_input_per_mtok: float | None = help_field(None, help="price per million prompt tokens, for --dry-run and the manifest's cost")
    price_output_per_mtok: float | None = help_field(None, help="price per million completion tokens")
    batch: bool = help_field(False, help="send through the provider's Batch API (files + /v1/batches; about half the price, results within the completion window) instead of one call per request")
    batch_max_requests: int = help_field(50_000, help="most requests in one batch input file (OpenAI's limit: 50,000)")
    batch_max_mb: float = help_field(190.0, help="largest batch input file in MB (OpenAI's limit: 200 MB)")
    batch_poll_s: float = help_field(30.0, help="seconds between two status checks of the running batches")
    batch_create_grace_s: float = help_field(600.0, help="after a run was killed while asking for a batch, how long (from that request) a rerun keeps looking for it at the provider before creating it anew; the SDKs' longest request time")
    batch_discount: float = help_field(0.5, help="batch price as a share of the synchronous price, for --dry-run and the manifest's cost")

    def __post_init__(self) -> None:
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, got {self.base_url!r}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be at least 1, got {self.max_concurrency}")
        if not (1 <= self.min_concurrency <= self.max_concurrency):
            raise ValueError(f"min_concurrency: must be between 1 and max_concurrency ({self.max_concurrency})")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be > 0 (or none for no limit), got {value}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst: must be at least 1, got {self.burst}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_s: must be >= 0 and at most backoff_max_s")
        if self.batch_max_requests < 1:
            raise ValueError(f"batch_max_requests: must be at least 1, got {self.batch_max_requests}")
        if self.batch_max_mb <= 0:
            raise ValueError(f"batch_max_mb: must be > 0, got {self.batch_max_mb}")
        if self.batch_poll_s <= 0:
            raise ValueError(f"batch_poll_s: must be > 0, got {self.batch_poll_s}")
        if self.batch_create_grace_s < 0:
            raise ValueError(f"batch_create_grace_s: must be >= 0, got {self.batch_create_grace_s}")
        if not 0 < self.batch_discount <= 1:
            raise ValueError(f"batch_discount: must be in (0, 1] (0.5 is half the synchronous price), got {self.batch_discount}")


@dataclass
class OpenAIConfig(ApiOptions):
    response_format: dict[str, Any] | None = help_field(None, help="OpenAI response_format, e.g. {type: json_schema, json_schema: {...}}")
    transport: str = help_field("aiohttp", help="HTTP transport of the openai client: aiohttp (fast) or httpx (its default)")
    batch_completion_window: str = help_field("24h", help="the batch's completion_window")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.transport not in ("aiohttp", "httpx"):
            raise ValueError(f"transport: unknown '{self.transport}'; choose aiohttp or httpx")


@dataclass
class AnthropicConfig(ApiOptions):
    base_url: str | None = help_field(None, help="endpoint; none reads ANTHROPIC_BASE_URL, else Anthropic's (https://api.anthropic.com)")
    api_key_env: str = help_field("ANTHROPIC_API_KEY", help="environment variable that holds the API key (the key is never written anywhere)")
    max_concurrency: int = help_field(64, help="most requests in flight; adaptive concurrency backs off below this on 429/529")
    extra_body: dict[str, Any] = help_field({}, help="extra Messages API fields passed through (e.g. metadata, thinking)")
    batch: bool = help_field(False, help="send through the Message Batches API (about half the price, results within 24 hours) instead of one call per request")
    batch_max_requests: int = help_field(100_000, help="most requests in one message batch (Anthropic's limit: 100,000)")
    batch_max_mb: float = help_field(250.0, help="largest message batch in MB (Anthropic's limit: 256 MB)")


@dataclass
class ReasoningConfig:
    """How a teacher's reasoning is told apart from its answer (docs/distillation.md)."""

    parse: bool = help_field(True, help="split the reasoning from the answer: the API's reasoning_content/reasoning field or Anthropic's thinking blocks, else the text between the tags")
    open_tag: str = help_field("<think>", help="the tag that opens the reasoning in the teacher's text")
    close_tag: str = help_field("</think>", help="the tag that closes it; text before it (after open_tag, if any) is the reasoning, text after it the answer")

    def __post_init__(self) -> None:
        if not self.open_tag or not self.close_tag or self.open_tag == self.close_tag:
            raise ValueError("open_tag/close_tag: two different, non-empty tags, e.g. <think> and </think>")


@dataclass
class TeacherConfig:
    model: str = help_field(help="HF model id or local model directory")
    backend: str = help_field("vllm", help="teacher backend: vllm (in-process engine), openai (any OpenAI-compatible endpoint) or anthropic (the Messages API)")
    revision: str | None = help_field(None, help="model revision (branch, tag or commit) for hub models")
    vllm: VllmConfig = help_field(default_factory=VllmConfig, help="options of the vllm backend")
    openai: OpenAIConfig = help_field(default_factory=OpenAIConfig, help="options of the openai backend")
    anthropic: AnthropicConfig = help_field(default_factory=AnthropicConfig, help="options of the anthropic backend")
    reasoning: ReasoningConfig = help_field(default_factory=ReasoningConfig, help="where the teacher's reasoning ends and its answer begins")

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"backend: unknown '{self.backend}'; valid backends: {', '.join(sorted(BACKEND_NAMES))}")
        if not self.model:
            raise ValueError("model: give an HF model id or a local model directory")


@dataclass
class JudgeConfig:
    """A judge's calls: the model, its template and its sampling. Shared by the judge filter,
    the yes/no checks of other filters, `synth diff --judge` and sft.eval_judge, each adding
    its own keys (and its own default for max_tokens)."""

    teacher: TeacherConfig = help_field(help="the judge model: a teacher block (backend vllm, openai or anthropic)")
    template: str | None = help_field(None, help="the judge's template; none: the packaged one of the check")
    max_tokens: int = help_field(256, help="most tokens of the judge's answer")
    temperature: float = help_field(0.0, help="judge sampling temperature")
    seed: int | None = help_field(0, help="judge sampling seed")

    def __post_init__(self) -> None:
        if self.template is not None and not Path(self.template).is_file():
            raise ValueError(f"template: {self.template} does not exist; give a judge template or leave it out for "
                             "the packaged one")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be at least 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")

    def template_path(self, packaged: str) -> Path:
        """The template file: `template`, or the packaged one named `packaged`."""
        return Path(self.template) if self.template else packaged_prompt(packaged)

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters of every judge call (part of each call's request id)."""
        return {"temperature": self.temperature, "top_p": 1.0, "top_k": None, "max_tokens": self.max_tokens,
                "seed": self.seed, "stop": []}


@dataclass
class OutputConfig:
    dir: str = help_field(help="output directory (raw.jsonl, failures.jsonl, manifest.json, run.log)")
    sync_every: int = help_field(256, help="fsync the raw log after this many new records")
    sync_interval_s: float = help_field(5.0, help="... or after this many seconds, whichever comes first")
    version_by_teacher: bool = help_field(True, help="a different teacher writes a new version beside dir (dir.v2, dir.v3, ...), never into the old one")

    def __post_init__(self) -> None:
        if not self.dir:
            raise ValueError("dir: give an output directory, e.g. output.dir=runs/demo")
        if self.sync_every < 1:
            raise ValueError(f"sync_every: must be at least 1, got {self.sync_every}")
        if self.sync_interval_s <= 0:
            raise ValueError(f"sync_interval_s: must be > 0, got {self.sync_interval_s}")


@dataclass
class CurateConfig:
    filters: list[Any] = help_field(
        ["truncated", "empty", "refusal", "exact_dedup"],
        help="filters in order: names or {name: ..., options}; see docs/curation.md and docs/reference/filters.md",
    )
    eval_fraction: float = help_field(0.0, help="share of prompts held out in eval.jsonl (near-duplicate prompts stay together)")
    eval_seed: int = help_field(0, help="seed of the train/eval assignment")
    split_threshold: float = help_field(0.7, help="prompt similarity (Jaccard) at which prompts count as one for the split")
    only_planned: bool = help_field(True, help="curate only records of this recipe's requests (not other configs in the same raw log)")
    checkpoint_s: float = help_field(120.0, help="seconds between checkpoints of a long curation, resumed after a kill (0: every 16,384 records); not with batch filters")

    def __post_init__(self) -> None:
        if not (0 <= self.eval_fraction < 1):
            raise ValueError(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.checkpoint_s < 0:
            raise ValueError(f"checkpoint_s: must be >= 0 seconds, got {self.checkpoint_s}")
        if not (0 < self.split_threshold <= 1):
            raise ValueError(f"split_threshold: must be in (0, 1], got {self.split_threshold}")


@dataclass
class CardConfig:
    teacher_terms: str | None = help_field(None, help="the teacher's licence or terms of use, stated on the dataset card")


EXPAND_METHODS = ("self_instruct", "evol_instruct", "document_qa")
QUESTION_KINDS = ("factual", "procedural", "what_if")


@dataclass
class ExpandOptions:
    method: str = help_field("self_instruct", help="self_instruct, evol_instruct or document_qa (questions about the chunks of `synth ingest`, which are then the seeds)")
    field: str = help_field("prompt", help="seed column (after seeds.fields mapping) that holds the instruction")
    target: int = help_field(100, help="self_instruct, document_qa: stop once this many new prompts are kept")
    rounds: int = help_field(10, help="self_instruct: most rounds; evol_instruct: generations of evolution")
    requests_per_round: int = help_field(16, help="self_instruct: teacher calls per round")
    examples: int = help_field(8, help="self_instruct: prompts shown per call (the paper: 6 seeds + 2 generated)")
    generated_examples: int = help_field(2, help="self_instruct: how many of those come from generated prompts")
    novelty: float = help_field(0.7, help="keep a prompt only if its ROUGE-L with every pool prompt is below this")
    minhash_above: int = help_field(5000, help="pool size above which MinHash LSH replaces the ROUGE-L scan")
    min_words: int = help_field(3, help="shortest prompt kept, in words")
    max_words: int = help_field(150, help="longest prompt kept, in words")
    breadth_share: float = help_field(0.2, help="evol_instruct: share of in-breadth evolutions")
    temperature: float = help_field(1.0, help="sampling temperature of expansion calls")
    max_tokens: int = help_field(512, help="most tokens per expansion answer")
    seed: int = help_field(0, help="seed of every random choice (examples, operations): reruns rebuild the same requests")
    questions_per_chunk: int = help_field(3, help="document_qa: questions asked for per chunk")
    question_kinds: list[str] = help_field(list(QUESTION_KINDS), help="document_qa: kinds to mix: factual, procedural (how to), what_if (what should I do if ...)")
    distractors: int = help_field(2, help="document_qa: other chunks shown with each question's source in `documents` (RAFT); 0 for none")

    def __post_init__(self) -> None:
        if self.method not in EXPAND_METHODS:
            raise ValueError(f"method: unknown '{self.method}'; choose {' or '.join(EXPAND_METHODS)}")
        if not (0 < self.novelty <= 1):
            raise ValueError(f"novelty: must be in (0, 1], got {self.novelty}")
        for name in ("target", "rounds", "requests_per_round", "examples", "min_words", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words: must be at least min_words ({self.min_words})")
        if not (0 <= self.breadth_share <= 1):
            raise ValueError(f"breadth_share: must be in [0, 1], got {self.breadth_share}")
        unknown = [k for k in self.question_kinds if k not in QUESTION_KINDS]
        if unknown or not self.question_kinds:
            raise ValueError(f"question_kinds: unknown '{unknown[0] if unknown else ''}'; choose from {', '.join(QUESTION_KINDS)}")
        if self.questions_per_chunk < 1 or self.distractors < 0:
            raise ValueError("questions_per_chunk: must be >= 1 (and distractors >= 0)")


@dataclass
class ConversationConfig:
    """Multi-turn generation (docs/distillation.md)."""

    turns: int = help_field(1, help="assistant turns per conversation; above 1 a user simulator writes each follow-up")
    user_template: str | None = help_field(None, help="Jinja2 template (system and user blocks) asking the simulator for the next user message; variables: conversation (the transcript), messages, turn, stop and the seed's fields; none: the packaged conversation/user.j2")
    user_teacher: TeacherConfig | None = help_field(None, help="the model that plays the user (a teacher block); none: the recipe's teacher plays both")
    user_temperature: float = help_field(0.8, help="the simulator's sampling temperature")
    user_max_tokens: int = help_field(256, help="longest user message the simulator writes, in tokens")
    stop: str = help_field("[END]", help="the simulator writes this to end the conversation before `turns`")

    def __post_init__(self) -> None:
        if self.turns < 1:
            raise ValueError(f"turns: must be at least 1, got {self.turns}")
        if self.user_template is not None and not Path(self.user_template).is_file():
            raise ValueError(f"user_template: {self.user_template} does not exist")
        if self.user_max_tokens < 1:
            raise ValueError(f"user_max_tokens: must be at least 1, got {self.user_max_tokens}")
        if not self.stop.strip():
            raise ValueError("stop: give the marker the simulator writes to end a conversation, e.g. [END]")

    def user_template_path(self) -> Path:
        """The simulator's template: user_template, or the packaged conversation/user.j2."""
        return Path(self.user_template) if self.user_template else packaged_prompt("conversation/user.j2")


@dataclass
class SandboxLimits:
    """Limits of one sandboxed run of model-written code (synth.sandbox)."""

    cpu_s: int = help_field(10, help="CPU seconds (RLIMIT_CPU); past it the code is killed")
    wall_s: float = help_field(20.0, help="seconds from start to end, waits included; past it the process group is killed")
    memory_mb: int = help_field(1024, help="address space in MiB (RLIMIT_AS): a larger allocation fails inside")
    processes: int = help_field(64, help="processes and threads (RLIMIT_NPROC): a fork bomb stops here")
    file_mb: int = help_field(64, help="largest file it may write, MiB (RLIMIT_FSIZE)")
    output_kb: int = help_field(1024, help="stdout and stderr read back, KiB each; past it the run is killed")

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s", "memory_mb", "processes", "file_mb", "output_kb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")


@dataclass
class CodeCheck:
    """Where a code answer's code and tests are and how it runs: shared by the code_exec
    filter and the repair section."""

    tests_field: str = help_field("tests", help="the seed field with the tests: a list of snippets (asserts), or one text with a test per line")
    language: str = help_field("python", help="the fenced block's language tag (untagged blocks count too)")
    block: str = help_field("last", help="which fenced block is the code: first, last or all (joined)")
    limits: SandboxLimits = field(default_factory=SandboxLimits)

    def __post_init__(self) -> None:
        if self.block not in ("first", "last", "all"):
            raise ValueError(f"block: unknown '{self.block}'; choose first, last or all")


@dataclass
class RepairConfig(CodeCheck):
    """Self-repair of code answers (docs/curation.md): while the seed's tests fail, the failure
    goes back to the teacher as the next user turn, up to `rounds` times."""

    rounds: int = help_field(2, help="most repair turns after the first answer; a conversation ends when its tests pass or the rounds run out")
    template: str | None = help_field(None, help="Jinja2 text of the repair message; variables: test (the first failing one), error (its end), passed, total, round and the seed's fields; none: the packaged code/repair.j2")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise ValueError(f"rounds: must be at least 1, got {self.rounds}")
        if self.template is not None and not Path(self.template).is_file():
            raise ValueError(f"template: {self.template} does not exist")

    def template_path(self) -> Path:
        return Path(self.template) if self.template else packaged_prompt("code/repair.j2")


@dataclass
class ToolsConfig:
    """Tool calls (docs/distillation.md): the tools the teacher may call and the Python
    functions that run them."""

    definitions: list[dict[str, Any]] | str = help_field(help="the tools, in OpenAI's format ({type: function, function: {name, description, parameters}}): a list, or a JSON/YAML file holding one")
    functions: dict[str, str] = help_field({}, help="tool name -> the Python function that runs it: 'path/to/file.py:function' or 'package.module:function'; called with the call's arguments as keyword arguments, it returns a string or JSON-serialisable value")
    choice: str = help_field("auto", help="tool_choice of each teacher call: auto (the teacher decides), required (it must call one) or none")
    first_choice: str | None = help_field(None, help="tool_choice of the first call of each user turn (e.g. required: every example uses a tool); none: as `choice`")
    parallel: bool = help_field(True, help="let one answer make several calls at once (parallel_tool_calls)")
    max_rounds: int = help_field(4, help="most teacher calls per user turn; a teacher still calling tools after them ends the conversation unanswered")
    timeout_s: float = help_field(30.0, help="a tool call running longer is killed and fed back to the teacher as an error")
    memory_mb: int = help_field(1024, help="address-space limit of each tool process, in MiB")
    workers: int = help_field(4, help="tool calls run at once, each in its own process")
    network: bool = help_field(False, help="let tools use the network; off: each runs in a network namespace of its own (or, where the kernel refuses one, with Python's sockets disabled)")

    def __post_init__(self) -> None:
        for name in ("choice", "first_choice"):
            value = getattr(self, name)
            if value is not None and value not in ("auto", "required", "none"):
                raise ValueError(f"{name}: auto, required or none, got {value!r}")
        for name in ("max_rounds", "workers", "memory_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be positive, got {self.timeout_s}")


@dataclass
class PairsConfig:
    """`synth pairs` (docs/distillation.md): preference pairs from the
    curated data, ranked by the recipe's best_of_n filter."""

    sources: list[str] = help_field(["samples"], help="samples: each kept answer against the worst ranked sample of its prompt; student: each kept answer against the trained student's answer to its prompt, where the teacher's scores higher")
    min_margin: float = help_field(0.0, help="a pair needs the chosen answer to score more than the rejected one by more than this")
    student_max_tokens: int = help_field(256, help="longest student answer, in tokens (source: student)")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sources) - {"samples", "student"})
        if unknown or not self.sources:
            raise ValueError(f"sources: samples and/or student, got {self.sources}")
        if self.student_max_tokens < 1:
            raise ValueError("student_max_tokens: must be at least 1")


@dataclass
class Recipe:
    seeds: SeedsConfig = help_field(help="where the seed prompts come from")
    template: TemplateConfig = help_field(help="how a seed row becomes a chat")
    teacher: TeacherConfig = help_field(help="the model that writes the answers")
    output: OutputConfig = help_field(help="where results go")
    sampling: SamplingConfig = help_field(default_factory=SamplingConfig, help="sampling parameters")
    curate: CurateConfig = help_field(default_factory=CurateConfig, help="how raw answers become the training set")
    card: CardConfig = help_field(default_factory=CardConfig, help="what the dataset card (OUTPUT/README.md) states")
    expand: ExpandOptions | None = help_field(None, help="prompt expansion (`synth expand`); with it, generation reads OUTPUT/expanded.jsonl")
    sft: SftConfig | None = help_field(None, help="student training (`sft train`, `sft eval`)")
    conversation: ConversationConfig | None = help_field(None, help="multi-turn conversations: a user simulator writes follow-ups, the teacher answers each")
    tools: ToolsConfig | None = help_field(None, help="tool calls: tools the teacher may call, run by Python functions, results fed back until it answers")
    repair: RepairConfig | None = help_field(None, help="self-repair of code answers: the seed's tests run on each answer in a sandbox, and a failure goes back to the teacher as the next user turn until they pass or the rounds run out")
    export: ExportConfig | None = help_field(None, help="ship the trained student: GGUF files for llama.cpp (`sft export`), each evaluated through llama-server; with this section (and sft), `synth run` exports and evaluates after training")
    pairs: PairsConfig | None = help_field(None, help="preference pairs (`synth pairs`) for `sft dpo`; with this section (and sft), `synth run` also builds the pairs, trains the DPO student and evaluates it")
    name: str = help_field("recipe", help="a name for this recipe, shown in the manifest")

    @property
    def multi_turn(self) -> bool:
        return self.conversation is not None and self.conversation.turns > 1

    @property
    def multi_call(self) -> bool:
        """Whether a record takes more than one teacher call (synth.conversation drives them)."""
        return self.multi_turn or self.tools is not None or self.repair is not None

    def __post_init__(self) -> None:
        if self.repair is not None:
            if self.multi_turn or self.tools is not None:
                raise ValueError("repair: not with conversation.turns > 1 or tools in one recipe yet; use one of them")
            if self.sampling.logprobs:
                raise ValueError("sampling.logprobs: not captured with repair (an example spans several teacher calls); "
                                 "set sampling.logprobs: 0")
            api = self.api_options
            if api is not None and api.batch:
                raise ValueError(f"teacher.{self.teacher.backend}.batch: repair needs each answer before its tests run; "
                                 "batch mode would wait up to a day per round. Set batch: false")
        if self.export is not None and self.sft is None:
            raise ValueError("export: exports the trained student, and the recipe has no sft section; add one (sft.model "
                             "at least) or remove export")
        if self.tools is not None:
            api = self.api_options
            if self.teacher.backend == "anthropic":
                raise ValueError("tools: not supported with the anthropic teacher yet (its tool_use blocks are not "
                                 "translated); use an OpenAI-compatible endpoint or the vllm backend")
            if api is not None and api.batch:
                raise ValueError(f"teacher.{self.teacher.backend}.batch: tool calls need each answer before the tool "
                                 "runs; batch mode would wait up to a day per round. Set batch: false")
            if self.sampling.logprobs:
                raise ValueError("sampling.logprobs: not captured with tools (an example spans several teacher calls); "
                                 "set sampling.logprobs: 0")
        if self.multi_turn:
            if self.sampling.logprobs:
                raise ValueError("sampling.logprobs: not captured for multi-turn conversations (conversation.turns > 1); "
                                 "set sampling.logprobs: 0 or conversation.turns: 1")
            api = self.api_options
            if api is not None and api.batch:
                raise ValueError(f"teacher.{self.teacher.backend}.batch: multi-turn conversations need each answer "
                                 "before the next turn; batch mode would wait up to a day per turn. Set batch: false")
        if self.teacher.backend == "anthropic" and self.sampling.logprobs:
            raise ValueError("sampling.logprobs: the anthropic teacher gives no logprobs (the Messages API has none); "
                             "set sampling.logprobs: 0, and score the answers afterwards with `synth score RECIPE "
                             "--teacher MODEL` if a local model shares the teacher's vocabulary")

    @property
    def pair_options(self) -> PairsConfig:
        """The pairs section, or its defaults (`synth pairs` without one)."""
        return self.pairs if self.pairs is not None else PairsConfig()

    @property
    def api_options(self) -> Any:
        """teacher.openai or teacher.anthropic for an API teacher, else None."""
        return getattr(self.teacher, self.teacher.backend) if self.teacher.backend in ("openai", "anthropic") else None

    @property
    def layout(self) -> Layout:
        """The files of output.dir (synth.plan resolves output.dir to the teacher's version)."""
        return Layout(Path(self.output.dir))

    @property
    def generation_seeds(self) -> SeedsConfig:
        """The rows generation reads: the seeds, or with an expand section the expanded
        prompts (OUTPUT/expanded.jsonl, one `prompt` column, given to the template under the
        variable expand.field). Every command sees the same rows."""
        if self.expand is None:
            return self.seeds
        fields = {self.expand.field: "prompt"}
        if self.expand.method == "document_qa":  # the answer template sees the chunk and its provenance
            fields.update({name: name for name in ("context", "source", "citation", "documents")})
        return SeedsConfig(path=str(self.layout.expanded), format="jsonl", fields=fields)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe YAML file, applying `a.b=c` overrides first.

    Every key is checked here; synth.plan.resolve checks the rest (filter options, tools)
    and points output.dir at the teacher's dataset version."""
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(Recipe, data)


def redacted(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data for saving, with any API key replaced."""
    def scrub(node: Any) -> Any:  # every teacher's key: the recipe's, a judge's, each backend's
        if isinstance(node, dict):
            return {k: "<redacted>" if k == "api_key" and v else scrub(v) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    return scrub(to_dict(recipe))
