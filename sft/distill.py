"""Knowledge distillation from the teacher's top-k logprobs (`sft.distill`), on TRL.

Generation with `sampling.logprobs: k` stores, for each answer, the teacher's k most likely
tokens and their logprobs at every position (synth.logprobs). Training matches each
training example to its record's entry, lines the teacher's positions up with the
student's tokens of the answer, and adds to TRL's cross-entropy a KL term:

    loss = (1 - alpha) * CE(student, teacher's text) + alpha * T^2 * KL(teacher_topk || student)

on the answer tokens, where the teacher's distribution is its top k at each position (with
the mass outside them as one tail bucket, or renormalised over the k), both softened by T.
Teacher and student share a tokenizer (checked by vocabulary digest), or, with
`sft.distill.cross_tokenizer`, they do not: both tokenizations of the answer are then lined
up by character, and at each position where a teacher token and a student token start at the
same character (both predict the text from there on) the teacher's top-k tokens are mapped to
the student's tokens of the same text (TRL's GOLD matches tokens across vocabularies the same
way); the teacher's mass on tokens with no counterpart joins the tail bucket. The KL is then
the same-vocabulary one. TRL's GOLD trainer distils on-policy from a live teacher; this is the
offline version, on the captured logprobs. An example whose logprobs are missing, whose
answer text changed since (PII redaction), or whose tokens do not line up trains on
cross-entropy alone and is counted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sft.config import DistillOptions
from synth.logprobs import UNKNOWN_VOCAB, LogprobStore, vocab_digest

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """The teacher's top k at the student's positions of one example's answer."""

    positions: np.ndarray  # int64 [n]: indices into the example's input_ids
    ids: np.ndarray  # int32 [n, k]
    logprobs: np.ndarray  # float32 [n, k]


@dataclass
class Targets:
    """Teacher targets by the token ids of an example, and what could not be lined up."""

    by_tokens: dict[tuple[int, ...], Target] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)  # with, partly aligned, missing, changed, not aligned
    k: int = 0  # teacher tokens per position


def last_assistant_span(mask: list[int]) -> tuple[int, int] | None:
    """[start, end) of the last run of 1s in an assistant-token mask."""
    end = None
    for i in range(len(mask) - 1, -1, -1):
        if mask[i] and end is None:
            end = i + 1
        elif not mask[i] and end is not None:
            return i + 1, end
    return (0, end) if end is not None else None


def char_starts(tokenizer: Any, ids: list[int]) -> list[int]:
    """Where each token starts in the decoded text of `ids`: the length of the text its
    predecessors decode to (special tokens decode to nothing). From the fast tokenizer's
    offsets when encoding the text gives back the same tokens (one encode: linear), else by
    decoding each prefix (quadratic in the answer's length)."""
    specials = set(tokenizer.all_special_ids)
    plain = [i for i in ids if i not in specials]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):  # a slow tokenizer has no offsets
        enc = None
    if enc is not None and list(enc["input_ids"]) == plain:
        ends = iter([end for _, end in enc["offset_mapping"]])
        starts, at = [], 0
        for i in ids:
            starts.append(at)
            if i not in specials:
                at = next(ends)
        if at == len(text):
            return starts
    starts, text = [], ""
    for i in range(len(ids)):
        starts.append(len(text))
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
    return starts


def cross_positions(teacher_tok: Any, teacher_ids: list[int], student_tok: Any, student_ids: list[int]) -> list[tuple[int, int]]:
    """(teacher position, student position) pairs of one answer where both tokenizations start
    a token at the same character of the same text, up to where the two texts part."""
    t_text = teacher_tok.decode(teacher_ids, skip_special_tokens=True)
    s_text = student_tok.decode(student_ids, skip_special_tokens=True)
    same = 0
    while same < min(len(t_text), len(s_text)) and t_text[same] == s_text[same]:
        same += 1
    specials = set(teacher_tok.all_special_ids), set(student_tok.all_special_ids)
    t_at = {c: i for i, c in reversed(list(enumerate(char_starts(teacher_tok, teacher_ids))))
            if c < same and teacher_ids[i] not in specials[0]}
    pairs = []
    for j, c in enumerate(char_starts(student_tok, student_ids)):
        if c in t_at and student_ids[j] not in specials[1]:
            pairs.append((t_at.pop(c), j))
    return pairs


def build_targets(opts: DistillOptions, sidecar: Path, records: list[tuple[list[dict[str, str]], str | None]],
                  tokenizer: Any, teacher_tokenizer: Any = None) -> Targets:
    """Line up each record's teacher logprobs with the student's tokens of its answer
    (`teacher_tokenizer`: with cross_tokenizer, the teacher's)."""
    if not sidecar.exists():
        raise ValueError(f"sft.distill: {sidecar} does not exist; generate with sampling.logprobs: K (the teacher's "
                         "top-k logprobs) or set sft.distill.logprobs to the file")
    store = LogprobStore(sidecar)
    student_vocab = vocab_digest(tokenizer)
    mapping = token_map(teacher_tokenizer, tokenizer) if opts.cross_tokenizer else None
    teacher_vocab = vocab_digest(teacher_tokenizer) if opts.cross_tokenizer else None
    targets = Targets()
    try:
        for messages, rid in records:
            status = store.status(rid, messages) if rid else "missing"
            if status != "ok":
                targets.counts[status] += 1
                continue
            topk, entry = store.get(rid)
            _check_vocab(opts, entry.vocab, student_vocab, teacher_vocab, sidecar, rid)
            k = opts.top_k or topk.k
            if k > topk.k:
                raise ValueError(f"sft.distill.top_k: {k} is more than the {topk.k} logprobs captured per token "
                                 f"(sampling.logprobs); lower top_k or generate with more")
            enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            ids, span = enc["input_ids"], last_assistant_span(enc["assistant_masks"])
            if opts.cross_tokenizer:
                _add_cross(targets, topk, k, ids, span, tokenizer, teacher_tokenizer, mapping)
                continue
            n = _common_prefix(ids[span[0]:span[1]] if span else [], topk.token_ids.tolist())
            if n == 0:
                targets.counts["not aligned"] += 1
                continue
            # The teacher's positions hold while the student's tokens of the answer are the
            # teacher's; where a teacher token re-tokenises differently, the contexts part and
            # the rest trains on cross-entropy. An answer cut at max_tokens has no end token:
            # the student's end token is then cross-entropy only.
            targets.counts["with" if n == len(topk.token_ids) else "partly aligned"] += 1
            targets.by_tokens[tuple(ids)] = Target(np.arange(span[0], span[0] + n), topk.ids[:n, :k].copy(),
                                                   topk.logprobs[:n, :k].astype(np.float32))
    finally:
        store.close()
    if targets.by_tokens:  # one k for every example: the smallest captured, or top_k
        k = min(t.ids.shape[1] for t in targets.by_tokens.values())
        for t in targets.by_tokens.values():
            t.ids, t.logprobs = t.ids[:, :k], t.logprobs[:, :k]
        targets.k = k
    without = sum(n for name, n in targets.counts.items() if name not in ("with", "partly aligned"))
    if opts.require and without:
        raise ValueError(f"sft.distill.require: {without} training examples have no aligned teacher logprobs "
                         f"({dict(targets.counts)}); set require: false to train those on cross-entropy only")
    logger.info("distill: %d examples with the teacher's top-k logprobs at every answer token, %d at a first part, "
                "%s without (cross-entropy only)", targets.counts["with"], targets.counts["partly aligned"],
                {k: v for k, v in targets.counts.items() if k not in ("with", "partly aligned")} or "none")
    return targets


def _check_vocab(opts: DistillOptions, vocab: bytes, student_vocab: bytes, teacher_vocab: bytes | None, sidecar: Path,
                 rid: str) -> None:
    """The logprobs' vocabulary (digests): the student's (or unknown, from an API), or with
    cross_tokenizer the teacher tokenizer's."""
    if not opts.cross_tokenizer:
        if vocab not in (student_vocab, UNKNOWN_VOCAB):
            raise ValueError(
                f"sft.distill: the teacher's logprobs in {sidecar} use another vocabulary than the student "
                f"({rid}); top-k distillation on token ids needs teacher and student to share a tokenizer: set "
                "sft.distill.cross_tokenizer: true to match them by text, choose a student of the teacher's "
                "family, or remove sft.distill to train on the teacher's text only")
        return
    if vocab == UNKNOWN_VOCAB:
        raise ValueError(f"sft.distill.cross_tokenizer: the teacher's logprobs in {sidecar} do not say which vocabulary "
                         f"their token ids are in ({rid}: written without one); capture them again with the recipe's "
                         "teacher (sampling.logprobs) or `synth score --teacher MODEL`")
    if vocab != teacher_vocab:
        raise ValueError(f"sft.distill.cross_tokenizer: the teacher's logprobs in {sidecar} are not in the vocabulary of "
                         f"the teacher tokenizer given ({rid}); set sft.distill.teacher to the model that wrote them")


def token_map(teacher_tokenizer: Any, tokenizer: Any) -> np.ndarray:
    """teacher token id -> the student's token id of the same text (-1 where the student has
    none): tokens compared as their vocabulary strings (byte-level pieces, spaces included)."""
    student = {}
    for text, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        student.setdefault(text, i)
    teacher = teacher_tokenizer.get_vocab()
    out = np.full(max(teacher.values()) + 1, -1, dtype=np.int64)
    for text, i in teacher.items():
        out[i] = student.get(text, -1)
    return out


def _add_cross(targets: Targets, topk: Any, k: int, ids: list[int], span: tuple[int, int] | None, tokenizer: Any,
               teacher_tokenizer: Any, mapping: np.ndarray) -> None:
    """The teacher's top k, mapped to the student's tokens of the same text, at the student's
    positions that start where a teacher token starts (cross_tokenizer)."""
    answer = ids[span[0]:span[1]] if span else []
    pairs = cross_positions(teacher_tokenizer, topk.token_ids.tolist(), tokenizer, answer)
    if not pairs:
        targets.counts["not aligned"] += 1
        return
    t_pos = np.array([t for t, _ in pairs])
    teacher_ids = topk.ids[t_pos, :k].astype(np.int64)
    mapped = np.where(teacher_ids >= 0, mapping[np.maximum(teacher_ids, 0)], -1)
    logprobs = np.where(mapped >= 0, topk.logprobs[t_pos, :k].astype(np.float32), -np.inf)
    specials = set(tokenizer.all_special_ids)
    targets.counts["with" if len(pairs) == sum(t not in specials for t in answer) else "partly aligned"] += 1
    targets.by_tokens[tuple(ids)] = Target(np.array([span[0] + s for _, s in pairs]), mapped.astype(np.int32),
                                           logprobs.astype(np.float32))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class TargetCollator:
    """TRL's collator, plus the teacher's targets at the batch's positions: `kd_ids`,
    `kd_logprobs` [batch, length, k] and `kd_mask` [batch, length] (padded or packed as TRL
    pads or packs the input ids)."""

    def __init__(self, base: Any, targets: Targets):
        self.base, self.targets, self.k = base, targets, max(targets.k, 1)

    def _example(self, input_ids: list[int], seq_lengths: list[int] | None) -> tuple[np.ndarray, ...]:
        n = len(input_ids)
        ids = np.zeros((n, self.k), dtype=np.int64)
        lps = np.full((n, self.k), -np.inf, dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        start = 0
        for length in seq_lengths or [n]:  # a packed row holds several examples
            target = self.targets.by_tokens.get(tuple(input_ids[start:start + length]))
            if target is not None:
                pos = target.positions + start
                ids[pos], lps[pos], mask[pos] = np.maximum(target.ids, 0), np.where(target.ids >= 0, target.logprobs, -np.inf), True
            start += length
        return ids, lps, mask

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        out = self.base(examples)
        parts = [self._example(list(e["input_ids"]), e.get("seq_lengths")) for e in examples]
        length = out["input_ids"].shape[1]
        if getattr(self.base, "padding_free", False):  # one row: the examples one after another
            parts = [tuple(np.concatenate(p) for p in zip(*parts, strict=True))]
        rows = len(parts)
        ids = torch.zeros((rows, length, self.k), dtype=torch.long)
        lps = torch.full((rows, length, self.k), float("-inf"))
        mask = torch.zeros((rows, length), dtype=torch.bool)
        for r, (i, lp, m) in enumerate(parts):
            n = min(len(m), length)
            ids[r, :n], lps[r, :n], mask[r, :n] = torch.from_numpy(i[:n]), torch.from_numpy(lp[:n]), torch.from_numpy(m[:n])
        out.update(kd_ids=ids, kd_logprobs=lps, kd_mask=mask)
        return out


def topk_kl(logits: Any, ids: Any, logprobs: Any, temperature: float, tail: bool, beta: float = 0.0) -> Any:
    """Mean over positions of the divergence between the teacher's and the student's
    distributions on the teacher's top k (and a tail bucket): generalised Jensen-Shannon with
    `beta` as TRL defines it (0: KL(teacher || student), the forward KL; 1: KL(student ||
    teacher), the reverse; between: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p +
    (1 - beta) q).

    logits [n, vocab] (the student's, at the positions that predict the answer tokens), ids and
    logprobs [n, k] (the teacher's; -inf where a position has fewer than k)."""
    import torch

    z = logits.float() / temperature
    student = torch.gather(z, -1, ids) - torch.logsumexp(z, dim=-1, keepdim=True)  # log q over the k
    absent = torch.isinf(logprobs)
    teacher = logprobs / temperature
    if tail:
        teacher, student = _with_tail(teacher, absent), _with_tail(student.masked_fill(absent, float("-inf")), absent)
        absent = torch.cat([absent, torch.zeros_like(absent[:, :1])], dim=-1)
    else:
        teacher = torch.log_softmax(teacher, dim=-1)
        student = torch.log_softmax(student.masked_fill(absent, float("-inf")), dim=-1)

    # Absent entries (-inf on both sides) set to 0 and left out of the sums: -inf minus -inf
    # would make the gradients NaN, even where the sum leaves them out.
    teacher, student = teacher.masked_fill(absent, 0.0), student.masked_fill(absent, 0.0)

    def kl(a: Any, b: Any) -> Any:  # KL(exp a || exp b) per position
        return torch.where(absent, torch.zeros_like(a), a.exp() * (a - b)).sum(-1)

    if beta == 0:
        div = kl(teacher, student)
    elif beta == 1:
        div = kl(student, teacher)
    else:
        mixture = torch.logaddexp(teacher + math.log(beta), student + math.log1p(-beta))
        div = beta * kl(teacher, mixture) + (1 - beta) * kl(student, mixture)
    return div.mean() * temperature**2


def _with_tail(logp: Any, absent: Any) -> Any:
    """Append log(1 - sum p) over the present entries: the mass outside the top k."""
    import torch

    mass = torch.logsumexp(logp.masked_fill(absent, float("-inf")), dim=-1, keepdim=True).clamp(max=-1e-6)
    return torch.cat([logp, torch.log(-torch.expm1(mass))], dim=-1)


def distill_trainer(base: type, opts: DistillOptions) -> type:
    """A subclass of TRL's trainer class `base` whose loss mixes cross-entropy with the top-k
    KL on the positions the collator marked (kd_mask). TRL's own loss runs a fused LM head
    that never builds the logits; the KL needs them, so batches with teacher targets take one
    plain forward and compute both terms from its logits (the same cost as one SFT step plus
    the KL), and batches without any keep TRL's path."""
    import torch

    class DistillTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            kd = {name: inputs.pop(name) for name in ("kd_ids", "kd_logprobs", "kd_mask") if name in inputs}
            if "kd_mask" not in kd or not bool(kd["kd_mask"][:, 1:].any()):
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            labels = inputs.pop("labels")
            outputs = model(**inputs, use_cache=False)
            logits, targets = outputs.logits[:, :-1], labels[:, 1:]  # logits at t-1 predict the token at t
            valid = targets != -100
            tokens = valid.sum()
            denom = torch.as_tensor(num_items_in_batch if num_items_in_batch is not None else tokens).clamp(min=1)
            ce = torch.nn.functional.cross_entropy(logits[valid].float(), targets[valid], reduction="sum") / denom
            where = kd["kd_mask"][:, 1:].to(logits.device)
            kl = topk_kl(logits[where], kd["kd_ids"][:, 1:].to(logits.device)[where],
                         kd["kd_logprobs"][:, 1:].to(logits.device)[where], opts.kd_temperature, opts.kd_tail,
                         opts.divergence_beta)
            kl = kl * tokens / denom  # this micro-batch's share, as the cross-entropy is normalised
            loss = (1 - opts.alpha) * ce + opts.alpha * kl
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL: DDP averages the gradients
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                correct = (logits[valid].argmax(-1) == targets[valid]).float().mean()
            self._metrics[mode]["mean_token_accuracy"].append(float(correct))
            self._metrics[mode]["kd_kl"].append(float(kl.detach() * denom / tokens.clamp(min=1)))
            if mode == "train":  # TRL's count of tokens seen (its own path counts in its compute_loss)
                seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else torch.tensor(inputs["position_ids"].size(1))
                self._total_train_tokens += self.accelerator.gather_for_metrics(seen.to(logits.device)).sum().item() // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    DistillTrainer.__name__ = DistillTrainer.__qualname__ = f"Distill{base.__name__}"
    return DistillTrainer
