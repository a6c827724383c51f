"""Examples that take more than one teacher call: multi-turn conversations
(`conversation.turns > 1`: a user simulator writes each follow-up, the teacher answers it,
up to `turns` answers or until the simulator writes `stop`) and tool calls (`tools:` the
teacher's calls run by synth.tools and their results fed back, round after round, until it
answers or `tools.max_rounds` runs out; tool results cached in OUTPUT/tool_results.jsonl).

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

Self-repair (`repair:`) is a conversation too, whose user is the seed's tests: after each
teacher answer they run in the sandbox (synth.codeexec); passing ends the conversation ("tests
pass"), a failure becomes the next user turn (the failing test and the end of its error, from
the packaged code/repair.j2), until `repair.rounds` repairs ("rounds"). The record keeps the
whole trajectory and `conversation: {turns, ended, turn_ids, tests}`.

The record's id is the first turn's request id combined with the conversation settings
(turns, simulator template, simulator and its sampling, stop marker; the tools, their
functions' source and options; synth.plan computes them): change one and the
conversations are new records, while every cached turn they share is reused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from synth.backends.base import Completion, Failure
from synth.calls import CachedCalls
from synth.codeexec import check_record
from synth.plan import Plan
from synth.rawlog import JsonlAppender, iter_records, repair_tail
from synth.reasoning import separate
from synth.requests import Request, request_id
from synth.templates import PromptTemplate
from synth.tools import wire_calls

logger = logging.getLogger(__name__)


def transcript(messages: list[dict[str, str]]) -> str:
    """The conversation as the simulator reads it (the system prompt left out)."""
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages if m["role"] in names)


@dataclass
class _State:
    request: Request  # the conversation (id = conversation id; messages = the first turn's)
    history: list[dict[str, Any]]
    turn_ids: list[str] = field(default_factory=list)  # every teacher call, tool rounds included
    answers: int = 0  # assistant answers (user turns answered)
    round: int = 0  # teacher calls in the current user turn
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    last_text: str = ""
    last_reasoning: str | None = None
    last_calls: list[dict[str, Any]] | None = None
    calls: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    ended: str | None = None  # "turns", "stop", "max_rounds"; with repair "tests pass" or "rounds"
    tests: dict[str, int] | None = None  # with repair: the last answer's tests passed and total


class Conversations:
    """A backend that turns each planned request into a whole conversation (see the module
    docstring). `teacher` is the running teacher backend; the simulator is the same one
    unless conversation.user_teacher names another. With tools, each user turn is a loop:
    the teacher calls tools, they run (synth.tools), their results go back, until it answers."""

    def __init__(self, plan: Plan, teacher: Any):
        recipe, layout = plan.recipe, plan.layout
        self.recipe, self.teacher = recipe, teacher
        self.turns = recipe.conversation.turns if recipe.conversation is not None else 1
        self.teacher_calls = CachedCalls(recipe.teacher, layout.turns, teacher, identity=plan.teacher)
        self.user_calls = None
        if recipe.multi_turn:
            sim = recipe.conversation.user_teacher
            self.user_calls = CachedCalls(sim or recipe.teacher, layout.user_turns, None if sim else teacher,
                                          identity=plan.user_identity)
            self.template = PromptTemplate.from_file(recipe.conversation.user_template_path())
        self.repair = recipe.repair
        if self.repair is not None:
            self.repair_template = jinja2.Template(self.repair.template_path().read_text(encoding="utf-8"),
                                                   undefined=jinja2.StrictUndefined)
        self.tools, self.tool_log = plan.toolbox, None
        if self.tools is not None:
            self.tool_log = ToolResults(layout.tool_results)
            logger.info("tools: %s; sandbox: %s", ", ".join(self.tools.schemas), self.tools.sandbox)

    @property
    def stats(self) -> dict[str, int]:
        """Teacher and simulator turns and tool calls run by this run (the rest came from the caches)."""
        return {"turns_sent": self.teacher_calls.sent, "user_turns_sent": self.user_calls.sent if self.user_calls else 0,
                **({"tool_calls_run": self.tool_log.ran} if self.tool_log else {})}

    def identity(self) -> dict[str, Any]:
        return self.teacher.identity()

    def _teacher_request(self, s: _State) -> Request:
        req = s.request
        tools = choice = None
        parallel = True
        if self.tools is not None:
            tools, choice, parallel = self.tools.definitions, self.tools.choice(s.round + 1), self.tools.cfg.parallel
        shown = {"tools": tools, "tool_choice": choice, **({} if parallel else {"parallel": False})} if tools else None
        rid = request_id(s.history, req.seed["fields"], self.teacher_calls.identity, req.sampling, req.sample_index, tools=shown)
        return Request(rid, [dict(m) for m in s.history], req.sampling, req.sample_index, req.seed, req.template,
                       tools=tools, tool_choice=choice, parallel_tool_calls=parallel)

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

    def _answer(self, s: _State, rec: dict[str, Any]) -> list[Any]:
        """Add the teacher's answer (its record in turns.jsonl) to the conversation; returns
        the tool calls it makes (synth.tools.Call), none for a final answer."""
        last = rec["messages"][-1]
        split = separate(last["content"], last.get("reasoning_content"), rec.get("finish_reason"), self.recipe.teacher.reasoning)
        text, thought = split.answer, split.reasoning
        usage = rec.get("usage") or {}
        s.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        s.completion_tokens += int(usage.get("completion_tokens") or 0)
        s.finish_reason = rec.get("finish_reason")
        s.turn_ids.append(rec["id"])
        s.round += 1
        calls = wire_calls(last) if self.tools is not None else []
        s.last_text, s.last_reasoning = last["content"], last.get("reasoning_content")
        s.last_calls = [c.wire() for c in calls] or None
        message = {"role": "assistant", "content": text, **({"reasoning_content": thought} if thought else {})}
        if calls:
            message["tool_calls"] = s.last_calls
        s.history.append(message)
        return calls

    def _run_tools(self, pending: list[tuple[_State, list[Any]]]) -> None:
        """Run the calls of every conversation waiting on tools (cached results first), and
        feed each result back as a `tool` message."""
        jobs = []  # (state, call, key)
        for s, calls in pending:
            for i, call in enumerate(calls):
                jobs.append((s, call, self.tools.result_key(call, s.turn_ids[-1], i)))
        todo = list({key: call for _, call, key in jobs if key not in self.tool_log.results}.items())
        if todo:  # each result recorded as it finishes: a kill loses only the calls still running
            self.tools.run([c for _, c in todo], on_result=lambda i, result: self.tool_log.add(todo[i][0], todo[i][1], result))
        for s, call, key in jobs:
            result = self.tool_log.results[key]
            s.calls += 1
            if result["error"]:
                s.errors.append({"round": s.round, "turn": s.answers + 1, "name": call.name, "kind": result["error"],
                                 "message": result["content"][:300]})
            s.history.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result["content"]})

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion | Failure]:
        active = [_State(r, [dict(m) for m in r.messages]) for r in requests]
        while active:
            asks = {s.request.id: self._teacher_request(s) for s in active}
            answers, failed = self.teacher_calls.answer(list(asks.values()))
            logger.info("conversations: %d teacher calls: %d answered, %d failed", len(asks), len(answers), len(failed))
            going, tooling, repairing = [], [], []
            for s in active:
                ask = asks[s.request.id]
                if ask.id in failed:
                    yield self._failure(s, s.answers + 1, "teacher", failed[ask.id])
                    continue
                calls = self._answer(s, self.teacher_calls.records[ask.id])
                if self.repair is not None:
                    if self._repaired(s):
                        yield self._completion(s)
                    else:
                        repairing.append(s)
                elif calls and s.round < self.recipe.tools.max_rounds:
                    tooling.append((s, calls))
                elif calls:  # still calling tools after max_rounds: recorded unanswered, for curation to reject
                    s.ended = "max_rounds"
                    yield self._completion(s)
                elif s.answers + 1 == self.turns:
                    s.answers += 1
                    s.ended = "turns"
                    yield self._completion(s)
                else:
                    s.answers += 1
                    going.append(s)
            if tooling:
                self._run_tools(tooling)
            active = [s for s, _ in tooling] + repairing
            if going:
                asked, failures = self._next_user_turns(going)
                yield from failures
                for s in asked:
                    if s.ended is None:
                        active.append(s)
                    else:
                        yield self._completion(s)

    def _repaired(self, s: _State) -> bool:
        """Run the seed's tests on the teacher's last answer (synth.codeexec, in the sandbox):
        True when the conversation ends (the tests pass, or the repair rounds are used up),
        else the failure is the next user turn."""
        r = self.repair
        s.answers += 1
        rec = {"seed": s.request.seed, "messages": s.history}
        report = check_record(rec, r.tests_field, r.language, r.block, r.limits)
        s.tests = {"passed": report.passed, "total": report.total}
        if report.total and report.passed == report.total:
            s.ended = "tests pass"
            return True
        if s.answers > r.rounds:
            s.ended = "rounds"
            return True
        test, error = report.failures[0] if report.failures else ("(none)", "no tests")
        tail = "\n".join(error.strip().splitlines()[-6:])
        message = self.repair_template.render(**s.request.seed["fields"], test=test.strip(), error=tail,
                                              passed=report.passed, total=report.total, round=s.answers)
        s.history.append({"role": "user", "content": message.strip()})
        s.round = 0
        return False

    def _next_user_turns(self, going: list[_State]) -> tuple[list[_State], list[Failure]]:
        """The simulator's next message for each conversation: the conversations asked (one
        the simulator ends has `ended` set), and the failures of those whose call failed."""
        turn = {s.request.id: s.answers + 1 for s in going}
        asks = {s.request.id: self._user_request(s, turn[s.request.id]) for s in going}
        replies, failed = self.user_calls.answer(list(asks.values()))
        asked, failures = [], []
        for s in going:
            ask = asks[s.request.id]
            if ask.id in failed:
                failures.append(self._failure(s, turn[s.request.id], "user simulator", failed[ask.id]))
                continue
            message = next_user_message(replies[ask.id], self.recipe.conversation.stop)
            if message is None:
                s.ended = "stop"
            else:
                s.history.append({"role": "user", "content": message})
                s.round = 0
            asked.append(s)
        return asked, failures

    def _completion(self, s: _State) -> Completion:
        *before, last = s.history
        req = s.request
        conversation = Request(req.id, before, req.sampling, req.sample_index, req.seed, req.template,
                               tools=self.tools.definitions if self.tools else None)
        # The last answer as the teacher wrote it: make_record splits its reasoning as for one turn.
        done = Completion(conversation, s.last_text, s.finish_reason, s.prompt_tokens, s.completion_tokens, None,
                          reasoning=s.last_reasoning, tool_calls=s.last_calls)
        if self.recipe.multi_turn:
            done.conversation = {"turns": s.answers, "ended": s.ended, "turn_ids": s.turn_ids}
        if self.repair is not None:  # answers, how it ended, each teacher call, the last answer's tests
            done.conversation = {"turns": s.answers, "ended": s.ended, "turn_ids": s.turn_ids, "tests": s.tests}
        if self.tools is not None:
            done.tool_use = {"calls": s.calls, "rounds": len(s.turn_ids), "errors": s.errors, "ended": s.ended,
                             **({} if self.recipe.multi_turn else {"turn_ids": s.turn_ids})}
        return done

    def _failure(self, s: _State, turn: int, who: str, reason: str) -> Failure:
        return Failure(s.request, "ConversationTurnFailed", f"turn {turn} ({who}): {reason}"[:2000],
                       extra={"turn": turn, "turns_done": s.answers})

    def close(self) -> None:
        if self.user_calls is not None:
            self.user_calls.close()
        self.teacher_calls.close()
        if self.tool_log is not None:
            self.tool_log.close()


class ToolResults:
    """Tool results cached in OUTPUT/tool_results.jsonl by the call that made them
    (synth.tools.Toolbox.result_key): a resumed run feeds back what the killed one got,
    so the conversation continues with the same history, and no tool runs twice."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        self.results = {r["id"]: r for r in iter_records(path)}
        self.sink = JsonlAppender(path, 1, 1.0).__enter__()
        self.ran = 0

    def add(self, key: str, call: Any, result: Any) -> None:
        row = {"id": key, "name": call.name, "arguments": call.arguments, "content": result.content, "error": result.error}
        self.sink.append(row)
        self.results[key] = row
        self.ran += 1

    def close(self) -> None:
        self.sink.__exit__(None, None, None)


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
