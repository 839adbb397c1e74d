"""Build a static SAM file from text corpora.

    python -m model.samd.build_static_sam --corpus data.jsonl notes.txt --tokenizer-path MODEL_DIR \
        --output corpus.sam [--max-tokens N]

`.txt` files are one document each. Every other file is JSONL, one object per line, whose text is
taken from the first of: "text" (a string), "turns" (a list of strings), "conversations" or
"messages" (lists of {"value" | "content": string}), "choices" (this harness's answer files:
[{"turns": [...]}, ...]). Every string is one document; documents are tokenized without special
tokens and each is followed by the tokenizer's eos id. Errors are one "error: ..." line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import UserError, report_user_errors

BATCH = 256   # texts per tokenizer call


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.samd.build_static_sam", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help=".jsonl or .txt files")
    parser.add_argument("--tokenizer-path", required=True, help="model directory or hub id of the tokenizer")
    parser.add_argument("--output", required=True, help="static SAM file to write (must not exist)")
    parser.add_argument("--max-tokens", type=int, default=None, help="stop after this many corpus tokens")
    return parser.parse_args(argv)


def _strings(value) -> list[str] | None:
    """`value` if it is a list of strings, else None."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def record_texts(record) -> list[str] | None:
    """The documents of one JSONL record, or None when it has no recognised text field."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("text"), str):
        return [record["text"]]
    turns = _strings(record.get("turns"))
    if turns is not None:
        return turns
    for key in ("conversations", "messages"):
        messages = record.get(key)
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
            texts = _strings([m.get("value", m.get("content")) for m in messages])
            if texts is not None:
                return texts
    choices = record.get("choices")
    if isinstance(choices, list) and all(isinstance(c, dict) for c in choices):
        per_choice = [_strings(c.get("turns")) for c in choices]
        if all(t is not None for t in per_choice):
            return [text for texts in per_choice for text in texts]
    return None


def read_texts(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".txt"):
                return [f.read()]
            return _read_jsonl(path, f)
    except FileNotFoundError:
        raise UserError(f"corpus file {path} does not exist") from None
    except UnicodeDecodeError:
        raise UserError(f"corpus file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None


def _read_jsonl(path: str, lines) -> list[str]:
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        found = record_texts(record)
        if found is None:
            raise UserError(f"{path}:{number}: no text found (expected a \"text\", \"turns\", \"conversations\", "
                            "\"messages\" or \"choices\" field holding strings)")
        texts.extend(found)
    return texts


def tokenize(texts: list[str], tokenizer, max_tokens: int | None) -> list[list[int]]:
    """Token ids per non-empty text, in batches, stopping once `max_tokens` are covered."""
    texts = [t for t in texts if t.strip()]
    documents, total = [], 0
    for start in range(0, len(texts), BATCH):
        for ids in tokenizer(texts[start:start + BATCH], add_special_tokens=False)["input_ids"]:
            if ids:
                documents.append(ids)
                total += len(ids) + 1
        if max_tokens is not None and total >= max_tokens:
            break
    return documents


def run(args: argparse.Namespace) -> None:
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError(f"--max-tokens must be a positive integer, got {args.max_tokens}")
    if os.path.exists(args.output):
        raise UserError(f"{args.output} already exists; remove it or choose another --output")
    texts = [text for path in args.corpus for text in read_texts(path)]
    if not any(text.strip() for text in texts):
        raise UserError("the corpus holds no text")

    from ..engine.loading import load_tokenizer   # heavy import only once the corpus reads cleanly
    from .static_sam import StaticSam, join_documents
    tokenizer = load_tokenizer(args.tokenizer_path)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer at {args.tokenizer_path} has no eos token to separate documents")
    documents = tokenize(texts, tokenizer, args.max_tokens)
    if not documents:
        raise UserError("the corpus holds no text")
    stream = join_documents(documents, tokenizer.eos_token_id, args.max_tokens)
    sam = StaticSam.build(stream, tokenizer)
    sam.save(args.output)
    print(f"wrote {args.output}: {len(stream)} tokens from {len(documents)} documents, "
          f"{sam.automaton.num_states} states")


def main(argv: list[str] | None = None) -> int:
    return report_user_errors(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
