"""Run llama.cpp's HF -> GGUF converter in its own process, with two fixes for stillhouse's models.

    python -m sft.gguf_convert CONVERT_DIR PRE_TOKENIZER -- MODEL_DIR --outfile F --outtype f16

1. The pre-tokenizer. llama.cpp needs a name for how the tokenizer splits text before BPE; its
   converter recognises a tokenizer by hashing how it encodes a test string, so any tokenizer it
   has not seen (every tokenizer trained for a task, as the demo's) fails with "BPE
   pre-tokenizer was not recognized". PRE_TOKENIZER is `auto` (the converter's recognition;
   where it fails, the name derived from tokenizer.json when its pre-tokenizer is one llama.cpp
   implements exactly: plain byte-level BPE is `gpt-2`, single digits then byte-level is
   `starcoder`) or a name the user gives (export.pre_tokenizer). Nothing derivable: exit 3 with
   a line naming the key.
2. The chat template. Training templates carry transformers' `{% generation %}` markers (for
   assistant-only loss); llama.cpp's Jinja engine does not know them, and they change nothing
   in the rendered text, so they are removed from the template written into the GGUF file.
"""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path
from typing import Any

UNRECOGNISED = 3
GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}


def derived_pre_tokenizer(model_dir: Path) -> str | None:
    """llama.cpp's pre-tokenizer equal to tokenizer.json's, where one is exactly equal."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    pre = json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer") or {}

    def is_(node: dict[str, Any], want: dict[str, Any]) -> bool:
        return all(node.get(k) == v for k, v in want.items())

    if is_(pre, _BYTE_LEVEL):
        return "gpt-2"
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if parts and len(parts) == 2 and is_(parts[0], _DIGITS) and is_(parts[1], _BYTE_LEVEL):
        return "starcoder"
    return None


def strip_generation_tags(template: Any) -> Any:
    """The chat template(s) without `{% generation %}` / `{% endgeneration %}`."""
    if isinstance(template, str):
        return GENERATION_TAG.sub("", template)
    if isinstance(template, list):
        return [{**t, "template": GENERATION_TAG.sub("", t["template"])} if isinstance(t, dict) and "template" in t
                else t for t in template]
    return template


def main(argv: list[str]) -> int:
    convert_dir, pre_tokenizer, sep, *args = argv
    assert sep == "--", "usage: python -m sft.gguf_convert CONVERT_DIR PRE_TOKENIZER -- CONVERTER_ARGS"
    sys.path[:0] = [convert_dir, str(Path(convert_dir) / "gguf-py")]
    import conversion.base as base  # llama.cpp's converter package (convert/)
    import gguf

    model_dir = Path(args[0])
    recognise = base.TextModel.get_vocab_base_pre

    def pre_tokenizer_name(self: Any, tokenizer: Any) -> str:
        if pre_tokenizer != "auto":
            return pre_tokenizer
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            derived = derived_pre_tokenizer(model_dir)
            if derived is None:
                print(f"stillhouse: llama.cpp's converter does not recognise the tokenizer of {model_dir}, and its "
                      "pre_tokenizer in tokenizer.json is not one stillhouse can map", file=sys.stderr)
                sys.exit(UNRECOGNISED)
            print(f"stillhouse: tokenizer not in llama.cpp's list; its tokenizer.json pre-tokenizer is llama.cpp's "
                  f"'{derived}'", file=sys.stderr)
            return derived

    base.TextModel.get_vocab_base_pre = pre_tokenizer_name
    add_chat_template = gguf.GGUFWriter.add_chat_template
    gguf.GGUFWriter.add_chat_template = lambda self, value: add_chat_template(self, strip_generation_tags(value))
    sys.argv = [str(Path(convert_dir) / "convert_hf_to_gguf.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
