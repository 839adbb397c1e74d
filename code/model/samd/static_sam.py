"""The static SAM: a suffix automaton over a fixed corpus, tied to the tokenizer that produced it.

File format (written by `save`, read by `load`): an uncompressed NumPy `.npz` archive, read with
allow_pickle=False, holding
    format            str    "samd-static-sam/1"
    tokenizer_class   str    class name of the tokenizer used to build it
    tokenizer_sha256  str    `tokenizer_identity` hash (vocabulary + class name)
    tokens            int32  the corpus token ids, documents each followed by the eos id
The automaton itself is not stored: `load` rebuilds it from `tokens` (linear time), which keeps the
file at 4 bytes per corpus token and free of pickled objects.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import UserError
from .automaton import SuffixAutomaton

FORMAT = "samd-static-sam/1"


def tokenizer_identity(tokenizer) -> tuple[str, str]:
    """(class name, sha256 hex over the class name and the sorted token -> id pairs)."""
    name = type(tokenizer).__name__
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps([name, vocab], ensure_ascii=False).encode("utf-8")).hexdigest()
    return name, digest


def join_documents(documents, eos_id: int, max_tokens: int | None = None) -> list[int]:
    """One token stream: every document followed by the eos id, cut at `max_tokens`."""
    stream: list[int] = []
    for doc in documents:
        stream.extend(doc)
        stream.append(eos_id)
        if max_tokens is not None and len(stream) >= max_tokens:
            return stream[:max_tokens]
    return stream


class StaticSam:
    def __init__(self, tokens: list[int], tokenizer_class: str, tokenizer_sha256: str, path: str | None = None):
        self.automaton = SuffixAutomaton(tokens)
        self.tokenizer_class = tokenizer_class
        self.tokenizer_sha256 = tokenizer_sha256
        self.path = path

    @classmethod
    def build(cls, tokens: list[int], tokenizer) -> "StaticSam":
        return cls(tokens, *tokenizer_identity(tokenizer))

    def __len__(self) -> int:
        return len(self.automaton)

    def save(self, path: str) -> None:
        """Write the file; refuses to replace an existing one."""
        try:
            with open(path, "xb") as f:
                np.savez(f, format=np.array(FORMAT), tokenizer_class=np.array(self.tokenizer_class),
                         tokenizer_sha256=np.array(self.tokenizer_sha256),
                         tokens=np.asarray(self.automaton.tokens, dtype=np.int32))
        except FileExistsError:
            raise UserError(f"{path} already exists; remove it or choose another --output") from None
        except OSError as exc:
            raise UserError(f"cannot write static SAM {path}: {exc.strerror or exc}") from None
        self.path = path

    @classmethod
    def load(cls, path: str, tokenizer) -> "StaticSam":
        if not os.path.isfile(path):
            raise UserError(f"static SAM {path} does not exist")
        fields = _read_fields(path)
        expected = tokenizer_identity(tokenizer)
        if fields["tokenizer_sha256"] != expected[1]:
            raise UserError(
                f"static SAM {path} was built with another tokenizer (file: {fields['tokenizer_class']} "
                f"vocab sha256 {fields['tokenizer_sha256'][:12]}, given: {expected[0]} vocab sha256 "
                f"{expected[1][:12]}); rebuild it with model.samd.build_static_sam")
        return cls(fields["tokens"].tolist(), fields["tokenizer_class"], fields["tokenizer_sha256"], path)


def _read_fields(path: str) -> dict:
    """The archive's fields, checked; any damage becomes one UserError line."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            fields = {key: archive[key] for key in ("format", "tokenizer_class", "tokenizer_sha256", "tokens")}
    except Exception as exc:  # noqa: BLE001 - truncated zip, missing key, not an npz at all
        raise UserError(f"static SAM {path} is not a readable static SAM file ({type(exc).__name__})") from None
    if str(fields["format"]) != FORMAT:
        raise UserError(f"static SAM {path} has format {str(fields['format'])!r}, expected {FORMAT!r}")
    tokens = fields["tokens"]
    if tokens.ndim != 1 or tokens.dtype != np.int32 or (tokens.size and tokens.min() < 0):
        raise UserError(f"static SAM {path} is corrupt: tokens must be a 1-D array of non-negative int32")
    return {"tokenizer_class": str(fields["tokenizer_class"]),
            "tokenizer_sha256": str(fields["tokenizer_sha256"]), "tokens": tokens}
