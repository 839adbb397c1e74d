"""Build a REST datastore from text corpora and/or a Hugging Face dataset.

    python -m model.rest.build_datastore --corpus data.jsonl notes.txt --tokenizer-path MODEL_DIR \
        --output chat.idx [--max-tokens N]
    python -m model.rest.build_datastore --hf-dataset stingning/ultrachat --hf-field data \
        --tokenizer-path MODEL_DIR --output ultrachat.idx

Corpus files are read as for the static SAM (model.samd.build_static_sam): `.txt` files are one
document each, other files JSONL with "text", "turns", "conversations", "messages" or "choices"
(this harness's answer files). A Hugging Face dataset (the REST paper's stores: ShareGPT
"Aeala/ShareGPT_Vicuna_unfiltered" for the small one, UltraChat "stingning/ultrachat" with
--hf-field data for the large one) is streamed, which needs network access; each row's text is
found the same way, or taken from --hf-field (a string, a list of strings or a list of messages).
Every string is one document, tokenized without special tokens and followed by the tokenizer's eos
id. Errors are one "error: ..." line, exit 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from itertools import islice

from ..errors import UserError, report_user_errors
from ..samd.build_static_sam import BATCH, read_texts, record_texts, tokenize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.rest.build_datastore", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", nargs="+", default=[], metavar="FILE", help=".jsonl or .txt files")
    parser.add_argument("--hf-dataset", default=None, metavar="NAME", help="Hugging Face dataset to stream (online)")
    parser.add_argument("--hf-split", default="train")
    parser.add_argument("--hf-field", default=None, help="row field holding the text (default: detected)")
    parser.add_argument("--tokenizer-path", required=True, help="model directory or hub id of the target tokenizer")
    parser.add_argument("--output", required=True, help="datastore file to write (must not exist)")
    parser.add_argument("--max-tokens", type=int, default=None, help="stop after this many corpus tokens")
    return parser.parse_args(argv)


def hf_row_texts(row, field: str | None) -> list[str] | None:
    if field is None:
        return record_texts(row)
    value = row.get(field) if isinstance(row, dict) else None
    # A string, a list of strings or a list of messages: the shapes record_texts knows under these keys.
    return record_texts({"text": value}) or record_texts({"turns": value}) or record_texts({"messages": value})


def hf_texts(name: str, split: str, field: str | None):
    """The dataset's texts, row by row, streamed."""
    from datasets import load_dataset
    # The hub client logs every retry while offline; the failure is reported once, as our error line.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    for number, row in enumerate(load_dataset(name, split=split, streaming=True), start=1):
        texts = hf_row_texts(row, field)
        if texts is None:
            where = f"field {field!r}" if field else "a \"text\", \"turns\", \"conversations\" or \"messages\" field"
            raise UserError(f"{name}[{split}] row {number}: no text found in {where}")
        yield from texts


def tokenize_stream(texts, tokenizer, max_tokens: int | None, documents: list[list[int]]) -> None:
    """Append the token ids of streamed texts to `documents` until `max_tokens` are covered."""
    texts = iter(texts)
    total = sum(len(doc) + 1 for doc in documents)
    while max_tokens is None or total < max_tokens:
        chunk = list(islice(texts, BATCH))
        if not chunk:
            return
        for doc in tokenize(chunk, tokenizer, None):
            documents.append(doc)
            total += len(doc) + 1


def run(args: argparse.Namespace) -> None:
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError(f"--max-tokens must be a positive integer, got {args.max_tokens}")
    if not args.corpus and not args.hf_dataset:
        raise UserError("give --corpus files, --hf-dataset, or both")
    if os.path.exists(args.output):
        raise UserError(f"{args.output} already exists; remove it or choose another --output")
    texts = [text for path in args.corpus for text in read_texts(path)]   # every file checked before tokenizing
    if not args.hf_dataset and not any(text.strip() for text in texts):
        raise UserError("the corpus holds no text")

    from ..engine.loading import first_line, load_tokenizer   # heavy imports only once the corpus reads cleanly
    from ..samd.static_sam import join_documents, tokenizer_identity
    from .datastore import Datastore
    tokenizer = load_tokenizer(args.tokenizer_path)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer at {args.tokenizer_path} has no eos token to separate documents")
    start = time.perf_counter()
    print(f"REST datastore: tokenizing {len(texts)} text(s) from {len(args.corpus)} file(s)"
          + (f" and streaming {args.hf_dataset}" if args.hf_dataset else ""), flush=True)
    documents = tokenize(texts, tokenizer, args.max_tokens)
    if args.hf_dataset:
        try:
            tokenize_stream(hf_texts(args.hf_dataset, args.hf_split, args.hf_field), tokenizer, args.max_tokens,
                            documents)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, bad split: all the user's to fix
            raise UserError(f"cannot read Hugging Face dataset {args.hf_dataset} (split {args.hf_split}): "
                            f"{first_line(exc)}") from None
    if not documents:
        raise UserError("the corpus holds no text")
    stream = join_documents(documents, tokenizer.eos_token_id, args.max_tokens)
    tokenized = time.perf_counter()
    print(f"REST datastore: building the suffix array of {len(stream):,} tokens", flush=True)
    datastore = Datastore.build(stream, tokenizer.eos_token_id, *tokenizer_identity(tokenizer))
    datastore.save(args.output)
    indexed = time.perf_counter()
    size = os.path.getsize(args.output)
    print(f"wrote {args.output}: {len(stream)} tokens from {len(documents)} documents; tokenized in "
          f"{tokenized - start:.1f} s, indexed and saved in {indexed - tokenized:.1f} s; {size / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    return report_user_errors(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
