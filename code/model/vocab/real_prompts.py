"""Prompts of real text for a model with its real tokenizer: a real question in the model's chat template, followed
by real reasoning (the shared R1 traces) up to a length, and the thinking budget as the harness forces it."""
from __future__ import annotations

import json
import os

from model.errors import UserError
from model.vocab.locate import TRACES


def first_trace(path: str = TRACES) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"the shared real traces are missing: {os.path.abspath(path)}")
    with open(path, encoding="utf-8") as f:
        return json.loads(f.readline())


def question_of(trace: dict) -> str:
    """The problem statement inside a trace's prompt ("... Problem: <question> Solution: \\n<think>\\n")."""
    return trace["prompt"].split("Problem: ", 1)[-1].rsplit(" Solution:", 1)[0]


def real_prompt(tokenizer, length: int, path: str = TRACES) -> list[int]:
    """`length` tokens: the chat-templated question, then the trace's own reasoning as if already generated."""
    from evaluation.run import paradigms
    trace = first_trace(path)
    prompt = paradigms.encode_prompt(tokenizer, [{"role": "user", "content": question_of(trace)}])
    thinking = tokenizer(trace["response"], add_special_tokens=False)["input_ids"]
    return (prompt + thinking)[:max(length, len(prompt))]
