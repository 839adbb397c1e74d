"""The REST datastore: a corpus as one token stream plus a suffix array over it, tied to its tokenizer.

File format (`save` writes it, `load` reads it; all integers little-endian):
    8 bytes   magic b"RESTDS1\\0" (the 1 is the format version)
    4 bytes   uint32 H, the length of the JSON header that follows
    H bytes   UTF-8 JSON {"tokenizer_class", "tokenizer_sha256", "n_tokens", "separator_id"},
              space-padded so that the arrays start at a multiple of 8
    4n bytes  int32 tokens: the corpus token ids, every document followed by the separator id
    4n bytes  int32 backward suffix array (below)
Token ids are stored as int32: REST's reference u16 files cannot hold the ids above 65,535 that
Qwen3 and Llama-3 vocabularies use.

Backward suffix array. REST looks up the longest *suffix* of the context. We sort every end
position e (1..n) by the tokens read backwards from it, T[e-1], T[e-2], ..., T[0] (a sequence that
runs out sorts before any token). That is the suffix array of the reversed stream, written as
e = n - start. The positions whose backward reading begins with the last L context tokens (newest
first) form one contiguous range, and the range for L+1 lies inside the one for L, so the longest
match is found by narrowing one range a token at a time instead of searching afresh for every L;
the continuation of an occurrence starts right at e.

The suffix array is built by pydivsufsort, which sorts bytes: it encodes integer arrays as
fixed-width big-endian unsigned values and keeps only the suffixes that start on a value boundary,
so byte order equals token order. We first renumber the ids densely (order-preserving), which
lets it use 2 bytes a token whenever the corpus uses fewer than 65,536 distinct ids.
"""
from __future__ import annotations

import json
import os
from bisect import bisect_left, bisect_right
from collections import Counter
from typing import NamedTuple

import numpy as np

from ..errors import UserError

MAGIC = b"RESTDS1\0"
HEADER_KEYS = ("tokenizer_class", "tokenizer_sha256", "n_tokens", "separator_id")
MAX_TOKENS = 2**31 - 1   # positions are stored as int32


class Match(NamedTuple):
    """The longest context suffix found: its length (0: none of at least min_suffix tokens) and the
    range [lo, hi) of the backward suffix array holding its occurrences."""
    length: int
    lo: int
    hi: int


class SearchResult(NamedTuple):
    length: int                                    # context tokens matched (0: no match)
    occurrences: int                               # occurrences of that suffix in the corpus
    continuations: list[tuple[tuple[int, ...], int]]   # (continuation, count), most frequent first


def backward_suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Every end position e in 1..n, sorted by the tokens read backwards from e (see the module doc)."""
    from pydivsufsort import divsufsort
    _, dense = np.unique(tokens[::-1], return_inverse=True)   # order-preserving: fewer bytes per token
    starts = divsufsort(dense.astype(np.int32))                # suffixes of the reversed stream
    return (len(tokens) - starts).astype(np.int32)


class Datastore:
    def __init__(self, tokens: np.ndarray, ends: np.ndarray, separator_id: int, tokenizer_class: str,
                 tokenizer_sha256: str, path: str | None = None):
        self.tokens = tokens            # int32 [n]
        self.ends = ends                # int32 [n], the backward suffix array
        self.separator_id = separator_id
        self.tokenizer_class = tokenizer_class
        self.tokenizer_sha256 = tokenizer_sha256
        self.path = path
        # memoryviews index to plain ints several times faster than numpy: the binary search lives on them.
        self._token_at = memoryview(tokens)
        self._end_at = memoryview(ends)

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, stream, separator_id: int, tokenizer_class: str, tokenizer_sha256: str) -> "Datastore":
        """Index a token stream (documents already joined with `separator_id`)."""
        tokens = np.asarray(stream, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise UserError("the datastore needs a non-empty 1-D token stream")
        if tokens.size > MAX_TOKENS or tokens.min() < 0 or tokens.max() > MAX_TOKENS:
            raise UserError(f"token stream must hold at most {MAX_TOKENS} ids, each in [0, {MAX_TOKENS}]")
        tokens = tokens.astype(np.int32)
        return cls(tokens, backward_suffix_array(tokens), int(separator_id), tokenizer_class, tokenizer_sha256)

    # --- files ---------------------------------------------------------------------------------------

    def header(self) -> bytes:
        fields = {"tokenizer_class": self.tokenizer_class, "tokenizer_sha256": self.tokenizer_sha256,
                  "n_tokens": len(self), "separator_id": self.separator_id}
        text = json.dumps(fields).encode("utf-8")
        text += b" " * (-(len(MAGIC) + 4 + len(text)) % 8)
        return MAGIC + len(text).to_bytes(4, "little") + text

    def save(self, path: str) -> None:
        """Write the file; refuses to replace an existing one."""
        try:
            with open(path, "xb") as f:
                f.write(self.header())
                f.write(memoryview(self.tokens.astype("<i4", copy=False)))
                f.write(memoryview(self.ends.astype("<i4", copy=False)))
        except FileExistsError:
            raise UserError(f"{path} already exists; remove it or choose another --output") from None
        except OSError as exc:
            raise UserError(f"cannot write REST datastore {path}: {exc.strerror or exc}") from None
        self.path = path

    @classmethod
    def load(cls, path: str, tokenizer) -> "Datastore":
        """Read a datastore built with `tokenizer`; any problem is one UserError line."""
        from ..samd.static_sam import tokenizer_identity
        fields, offset = read_header(path)
        given_class, given_sha = tokenizer_identity(tokenizer)
        if fields["tokenizer_sha256"] != given_sha:
            raise UserError(
                f"REST datastore {path} was built with another tokenizer (file: {fields['tokenizer_class']} "
                f"vocab sha256 {fields['tokenizer_sha256'][:12]}, given: {given_class} vocab sha256 "
                f"{given_sha[:12]}); rebuild it with model.rest.build_datastore")
        n = fields["n_tokens"]
        with open(path, "rb") as f:
            f.seek(offset)
            tokens = np.fromfile(f, dtype="<i4", count=n).astype(np.int32, copy=False)
            ends = np.fromfile(f, dtype="<i4", count=n).astype(np.int32, copy=False)
        if len(tokens) != n or len(ends) != n:
            raise UserError(f"REST datastore {path} is truncated")
        if tokens.min() < 0 or ends.min() < 1 or ends.max() > n:
            raise UserError(f"REST datastore {path} is corrupt: token ids or suffix positions out of range")
        return cls(tokens, ends, fields["separator_id"], fields["tokenizer_class"], fields["tokenizer_sha256"], path)

    # --- retrieval -----------------------------------------------------------------------------------

    def match(self, context, max_suffix: int = 16, min_suffix: int = 2) -> Match:
        """The longest suffix of `context` (at most max_suffix tokens) found in the corpus.

        Equivalent to REST's "try L = max_suffix, ..., min_suffix, stop at the first L that occurs",
        computed by narrowing: the range for L+1 tokens is searched inside the range for L."""
        token_at, lo, hi = self._token_at, 0, len(self.ends)
        found = Match(0, 0, 0)
        for depth in range(min(max_suffix, len(context))):
            def backward(end, depth=depth):   # the token `depth` places before `end`; -1 once the corpus runs out
                return token_at[end - 1 - depth] if end > depth else -1
            want = context[-1 - depth]
            lo = bisect_left(self._end_at, want, lo, hi, key=backward)
            hi = bisect_right(self._end_at, want, lo, hi, key=backward)
            if lo == hi:
                break
            found = Match(depth + 1, lo, hi)
        return found if found.length >= min_suffix else Match(0, 0, 0)

    def continuations(self, found: Match, max_occurrences: int = 5000, max_continuation: int = 10) -> np.ndarray:
        """[m, max_continuation] int64: the tokens after up to max_occurrences occurrences, -1 past
        the document separator or the end of the corpus.

        Above max_occurrences the occurrences are taken at an even stride through the range (REST
        takes the first ones): the range is ordered by the text *before* the match, so a stride
        samples all of it rather than one corner."""
        step = -(-(found.hi - found.lo) // max_occurrences)
        starts = self.ends[found.lo:found.hi:step]
        window = starts[:, None] + np.arange(max_continuation)
        n = len(self.tokens)
        tokens = self.tokens[np.minimum(window, n - 1)]
        stop = np.logical_or.accumulate((tokens == self.separator_id) | (window >= n), axis=1)
        return np.where(stop, -1, tokens)

    def search(self, context_tail, max_suffix: int = 16, min_suffix: int = 2, max_occurrences: int = 5000,
               max_continuation: int = 10) -> SearchResult:
        """The longest matching suffix and its non-empty continuations with counts."""
        found = self.match(context_tail, max_suffix, min_suffix)
        if not found.length:
            return SearchResult(0, 0, [])
        rows = self.continuations(found, max_occurrences, max_continuation).tolist()
        counts = Counter(tuple(t for t in row if t >= 0) for row in rows)
        counts.pop((), None)
        return SearchResult(found.length, found.hi - found.lo, counts.most_common())


def read_header(path: str) -> tuple[dict, int]:
    """(header fields, byte offset of the token array), after checking magic and file size."""
    if not os.path.isfile(path):
        raise UserError(f"--datastore-path {path}: no such file (build one with python -m model.rest.build_datastore)")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))
            if magic != MAGIC:
                raise UserError(f"REST datastore {path} is not a REST datastore file (bad magic; "
                                "build it with model.rest.build_datastore)")
            length = int.from_bytes(f.read(4), "little")
            text = f.read(length)
        fields = json.loads(text.decode("utf-8")) if len(text) == length else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        fields = None
    except OSError as exc:
        raise UserError(f"cannot read REST datastore {path}: {exc.strerror or exc}") from None
    if not isinstance(fields, dict) or any(key not in fields for key in HEADER_KEYS) \
            or not isinstance(fields["n_tokens"], int) or not isinstance(fields["separator_id"], int):
        raise UserError(f"REST datastore {path} is corrupt: unreadable header")
    offset = len(MAGIC) + 4 + length
    expected = offset + 8 * fields["n_tokens"]
    actual = os.path.getsize(path)
    if actual != expected:
        raise UserError(f"REST datastore {path} is truncated or corrupt: {actual} bytes, expected {expected}")
    return fields, offset
