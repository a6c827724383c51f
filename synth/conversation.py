"""Multi-turn generation (`conversation.turns > 1`): a user simulator writes each follow-up,
the teacher answers it, up to `turns` answers or until the simulator writes `stop`.

Conversations advance in rounds, all of them at once (one batch of teacher calls, then one
of simulator calls, ...), so an engine or an API stays busy. Every call is a request whose
id covers everything it was shown, the whole history included, and is cached as it
finishes: teacher turns in OUTPUT/turns.jsonl, simulator turns in OUTPUT/user_turns.jsonl.
A run killed mid-conversation therefore resumes where each conversation stood, paying for
no turn twice. A finished conversation becomes one record in raw.jsonl whose `messages` is
the whole conversation (TRL's conversational format; training masks every assistant turn),
with the turns' usage summed and `conversation: {turns, ended, turn_ids}`. A turn that fails
(an error, a history longer than the model's context) ends its conversation as a failure
naming the turn; the next run retries from there.

The record's id is the first turn's request id combined with the conversation settings
(turns, simulator template, simulator and its sampling, stop marker): change one and the
conversations are new records, while every cached turn they share is reused.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.backends.base import Completion, Failure
from synth.calls import CachedCalls
from synth.config import Recipe
from synth.reasoning import separate
from synth.requests import Request, request_id
from synth.runtime import canonical_json, file_sha256
from synth.templates import PromptTemplate, builtin_template

logger = logging.getLogger(__name__)


def user_template_path(recipe: Recipe) -> str:
    c = recipe.conversation
    return c.user_template or str(builtin_template("conversation/user.j2"))


def settings_identity(recipe: Recipe, teacher: dict[str, Any]) -> dict[str, Any]:
    """What a conversation's record id holds besides its first request: the settings, and the
    identity of the model that plays the user (`teacher`'s when it plays both)."""
    from synth.backends import load_backend_class

    c = recipe.conversation
    user = teacher if c.user_teacher is None else load_backend_class(c.user_teacher.backend).identity_for(c.user_teacher)
    return {"turns": c.turns, "user_template": file_sha256(Path(user_template_path(recipe))), "user": user,
            "user_temperature": c.user_temperature, "user_max_tokens": c.user_max_tokens, "stop": c.stop}


def conversation_id(first_request_id: str, settings: dict[str, Any]) -> str:
    payload = canonical_json({"first": first_request_id, "conversation": settings})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def transcript(messages: list[dict[str, str]]) -> str:
    """The conversation as the simulator reads it (the system prompt left out)."""
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages if m["role"] in names)


@dataclass
class _State:
    request: Request  # the conversation (id = conversation id; messages = the first turn's)
    history: list[dict[str, Any]]
    turn_ids: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    last_text: str = ""
    last_reasoning: str | None = None
    ended: str | None = None  # "turns" or "stop"


class Conversations:
    """A backend that turns each planned request into a whole conversation (see the module
    docstring). `teacher` is the running teacher backend; the simulator is the same one
    unless conversation.user_teacher names another."""

    def __init__(self, recipe: Recipe, teacher: Any):
        self.recipe, self.teacher = recipe, teacher
        layout = recipe.layout
        self.teacher_calls = CachedCalls(recipe.teacher, layout.turns, teacher)
        sim = recipe.conversation.user_teacher
        self.user_calls = CachedCalls(sim or recipe.teacher, layout.user_turns, None if sim else teacher)
        self.template = PromptTemplate.load(type(recipe.template)(path=user_template_path(recipe)))

    @property
    def stats(self) -> dict[str, int]:
        """Teacher and simulator turns sent by this run (the rest came from the caches)."""
        return {"turns_sent": self.teacher_calls.sent, "user_turns_sent": self.user_calls.sent}

    def identity(self) -> dict[str, Any]:
        return self.teacher.identity()

    def _teacher_request(self, s: _State) -> Request:
        req = s.request
        rid = request_id(s.history, req.seed["fields"], self.teacher_calls.identity, req.sampling, req.sample_index)
        return Request(rid, [dict(m) for m in s.history], req.sampling, req.sample_index, req.seed, req.template)

    def _user_request(self, s: _State, turn: int) -> Request:
        c, req = self.recipe.conversation, s.request
        fields = {**req.seed["fields"], "conversation": transcript(s.history), "messages": s.history, "turn": turn,
                  "stop": c.stop}
        messages = self.template.render(fields, where=f"conversation {req.id[:8]} turn {turn}")
        seed = req.sampling.get("seed")
        sampling = {"temperature": c.user_temperature, "top_p": 1.0, "top_k": None, "max_tokens": c.user_max_tokens,
                    "seed": None if seed is None else int(seed) + 7919 * turn, "stop": []}
        rid = request_id(messages, req.seed["fields"], self.user_calls.identity, sampling, req.sample_index)
        return Request(rid, messages, sampling, req.sample_index, req.seed, self.template.provenance())

    def _answer(self, s: _State, rec: dict[str, Any]) -> None:
        """Add the teacher's answer (its record in turns.jsonl) to the conversation."""
        last = rec["messages"][-1]
        split = separate(last["content"], last.get("reasoning_content"), rec.get("finish_reason"), self.recipe.teacher.reasoning)
        text, thought = split.answer, split.reasoning
        usage = rec.get("usage") or {}
        s.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        s.completion_tokens += int(usage.get("completion_tokens") or 0)
        s.finish_reason = rec.get("finish_reason")
        s.turn_ids.append(rec["id"])
        s.last_text, s.last_reasoning = last["content"], last.get("reasoning_content")
        s.history.append({"role": "assistant", "content": text, **({"reasoning_content": thought} if thought else {})})

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion | Failure]:
        c = self.recipe.conversation
        active = [_State(r, [dict(m) for m in r.messages]) for r in requests]
        for turn in range(1, c.turns + 1):
            if not active:
                break
            asks = {s.request.id: self._teacher_request(s) for s in active}
            answers, failed = self.teacher_calls.answer(list(asks.values()))
            logger.info("conversations: turn %d of %d: %d answered, %d failed", turn, c.turns, len(answers), len(failed))
            going = []
            for s in active:
                ask = asks[s.request.id]
                if ask.id in failed:
                    yield self._failure(s, turn, "teacher", failed[ask.id])
                    continue
                self._answer(s, self.teacher_calls.records[ask.id])
                if turn == c.turns:
                    s.ended = "turns"
                    yield self._completion(s)
                else:
                    going.append(s)
            if not going:
                break
            asks = {s.request.id: self._user_request(s, turn + 1) for s in going}
            replies, failed = self.user_calls.answer(list(asks.values()))
            active = []
            for s in going:
                ask = asks[s.request.id]
                if ask.id in failed:
                    yield self._failure(s, turn + 1, "user simulator", failed[ask.id])
                    continue
                message = next_user_message(replies[ask.id], c.stop)
                if message is None:
                    s.ended = "stop"
                    yield self._completion(s)
                    continue
                s.history.append({"role": "user", "content": message})
                active.append(s)

    def _completion(self, s: _State) -> Completion:
        *before, last = s.history
        req = s.request
        conversation = Request(req.id, before, req.sampling, req.sample_index, req.seed, req.template)
        # The last answer as the teacher wrote it: make_record splits its reasoning as for one turn.
        done = Completion(conversation, s.last_text, s.finish_reason, s.prompt_tokens, s.completion_tokens, None,
                          reasoning=s.last_reasoning)
        done.conversation = {"turns": len(s.turn_ids), "ended": s.ended, "turn_ids": s.turn_ids}
        return done

    def _failure(self, s: _State, turn: int, who: str, reason: str) -> Failure:
        return Failure(s.request, "ConversationTurnFailed", f"turn {turn} ({who}): {reason}"[:2000],
                       extra={"turn": turn, "turns_done": len(s.turn_ids)})

    def close(self) -> None:
        self.user_calls.close()
        self.teacher_calls.close()


def next_user_message(reply: str, stop: str) -> str | None:
    """The simulator's reply as the user's next message; None when it ends the conversation
    (the stop marker, or nothing written)."""
    text = reply.strip()
    if not text or stop in text:
        return None
    for prefix in ("User:", "user:"):  # a simulator that labels its turn as the transcript does
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    return text or None
