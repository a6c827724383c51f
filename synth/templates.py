"""Prompt templates: a seed row into a chat, rendered by Jinja2 in a sandbox.

A template file has a `{% block user %}` and optionally a `{% block system %}`; a file
without blocks is the user message as a whole. Few-shot examples (a JSONL of
{"user", "assistant"} turns) go between the system prompt and the user message. The
template's name and the SHA-256 of its source and few-shot file go on every record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from synth.config import TemplateConfig
from synth.runtime import read_jsonl_objects


def _environment() -> SandboxedEnvironment:
    # StrictUndefined: a misspelt variable is an error, not an empty string in the prompt.
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
    )


def _load_fewshot(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ValueError(f"template.fewshot: {path} does not exist")
    example = '{"user": "...", "assistant": "..."}'
    turns: list[dict[str, str]] = []
    for lineno, row in read_jsonl_objects(path, "template.fewshot", example):
        for key in ("user", "assistant"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(
                    f"template.fewshot: {path} line {lineno} needs a non-empty string field '{key}' (each line: {example})"
                )
        turns.append({"user": row["user"], "assistant": row["assistant"]})
    return turns


@dataclass
class PromptTemplate:
    """A loaded template, ready to render seed rows into chats."""

    name: str
    path: str
    sha256: str
    template: jinja2.Template
    fewshot: list[dict[str, str]]
    variables: dict[str, Any]

    @classmethod
    def load(cls, cfg: TemplateConfig) -> PromptTemplate:
        path = Path(cfg.path)
        if not path.is_file():
            raise ValueError(f"template.path: {path} does not exist; give a Jinja2 file such as prompts/demo/answer.j2")
        source = path.read_text(encoding="utf-8")
        try:
            template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"template.path: {path} line {exc.lineno}: {exc.message}") from None
        unknown = set(template.blocks) - {"system", "user"}
        if unknown:
            raise ValueError(
                f"template.path: {path} has block(s) {', '.join(sorted(unknown))}; only 'system' and 'user' are used"
            )
        if template.blocks and "user" not in template.blocks:
            raise ValueError(f"template.path: {path} has blocks but no {{% block user %}}; add one for the user message")
        fewshot = _load_fewshot(Path(cfg.fewshot)) if cfg.fewshot else []
        digest = hashlib.sha256(source.encode("utf-8"))
        if cfg.fewshot:
            digest.update(Path(cfg.fewshot).read_bytes())
        return cls(
            name=path.stem,
            path=str(path),
            sha256=digest.hexdigest(),
            template=template,
            fewshot=fewshot,
            variables=dict(cfg.variables),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> PromptTemplate:
        """A template file without few-shot turns or variables (packaged prompts, judges)."""
        return cls.load(TemplateConfig(path=str(path)))

    def provenance(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}

    def _render_block(self, block: str, context: dict[str, Any]) -> str:
        if not self.template.blocks:
            return self.template.render(context) if block == "user" else ""
        if block not in self.template.blocks:
            return ""
        ctx = self.template.new_context(context)
        return "".join(self.template.blocks[block](ctx))

    def render(self, fields: dict[str, Any], where: str = "") -> list[dict[str, str]]:
        """The chat for one seed row. `where` ("seeds.jsonl line 3") goes into errors."""
        context = {**self.variables, **fields}
        try:
            system = self._render_block("system", context).strip()
            user = self._render_block("user", context).strip()
        except jinja2.UndefinedError as exc:
            available = ", ".join(sorted(context)) or "none"
            raise ValueError(
                f"template.path: {self.path} uses {exc.message.replace(' is undefined', '')}, which {where} does not provide "
                f"(available: {available}); add that column to the seeds, map one with "
                f"--set seeds.fields.NAME=COLUMN, or guard it with {{% if NAME is defined %}}"
            ) from None
        except SecurityError as exc:
            raise ValueError(f"template.path: {self.path} tried an unsafe operation ({exc}); templates run in a sandbox") from None
        except jinja2.TemplateError as exc:
            raise ValueError(f"template.path: {self.path} failed to render {where}: {exc}") from None
        if not user:
            raise ValueError(f"template.path: {self.path} renders an empty user message for {where}; check the seed row and template")
        messages: list[dict[str, str]] = []
        if system:
            messages.append({"role": "system", "content": system})
        for turn in self.fewshot:
            messages.append({"role": "user", "content": turn["user"]})
            messages.append({"role": "assistant", "content": turn["assistant"]})
        messages.append({"role": "user", "content": user})
        return messages
