"""Where the built tokenizers and the shared real traces live, and loading them with a clear error when absent."""
from __future__ import annotations

import os

from model.errors import UserError
from model.vocab.families import FAMILIES, family_of

CODE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZERS = os.path.join(CODE, "local_model", "tokenizers")
# The shared data folder sits beside the repository (../shared from its root).
TRACES = os.path.join(os.path.dirname(CODE), "..", "shared", "data", "traces", "r1_distill_math.jsonl")


def tokenizer_dir(family: str) -> str:
    return os.path.join(TOKENIZERS, family)


def has_tokenizer(family: str) -> bool:
    return os.path.isfile(os.path.join(tokenizer_dir(family), "tokenizer.json"))


def load_family(family: str):
    from transformers import AutoTokenizer
    if family not in FAMILIES:
        raise UserError(f"no tokenizer family {family!r} (known: {', '.join(FAMILIES)})")
    if not has_tokenizer(family):
        raise UserError(f"{tokenizer_dir(family)} is missing: run `make tokenizers` from the repository root")
    return AutoTokenizer.from_pretrained(tokenizer_dir(family))


def tokenizer_for_model(model: str) -> str:
    """The folder of the tokenizer a trace's model name calls for."""
    family = family_of(model)
    if family is None:
        raise UserError(f"no built tokenizer serves model {model!r}: give --model-path")
    return tokenizer_dir(family.name)
