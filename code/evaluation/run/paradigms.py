"""Test-time-scaling paradigms: what each turn asks the model, and the thinking budget.

A turn is one generation: a round of multi-round thinking, or one sample of Best-of-N.
"""
from __future__ import annotations

from model.engine import ThinkingBudget
from model.errors import UserError

THINK_START, THINK_END = "<think>", "</think>"
REANSWER = ("\nPreviously I tried to solve the problem. Now I need to double check and verify my previous answer "
            "and re-answer the question. My previous answer is: <answer> {answer} </answer>, and please re-answer.")
BUDGET_PHRASE = ("Considering the limited time by the user, I have to give the solution based on the thinking "
                 "directly now.\n</think>.\n\n")
BUDGET_FRACTION = 0.8


def turns_per_question(args) -> int:
    return args.num_rounds if args.paradigm == "multi_round" else args.bon_n if args.paradigm == "best_of_n" else 1


def final_answer(output: str) -> str:
    """The part of an output a later round quotes: after the end of thinking when there is one, else all of it."""
    return output.rsplit(THINK_END, 1)[-1].strip() if THINK_END in output else output.strip()


def turn_messages(question: dict, paradigm: str, turn: int, previous_output: str | None) -> list[dict]:
    text = question["turns"][0]
    if paradigm == "multi_round" and turn > 0:
        text += REANSWER.format(answer=final_answer(previous_output or ""))
    # Best-of-N: every sample sees the SAME single-turn prompt (the seed accumulated turns by mistake).
    return [{"role": "user", "content": text}]


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = messages[-1]["content"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError("a prompt tokenized to nothing")
    return ids


def single_token_id(tokenizer, text: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(text)
    return None if tid is None or tid == tokenizer.unk_token_id else tid


def has_thinking_markers(tokenizer) -> bool:
    return single_token_id(tokenizer, THINK_START) is not None and single_token_id(tokenizer, THINK_END) is not None


def thinking_budget(tokenizer, max_new_tokens: int) -> ThinkingBudget | None:
    """The seed's budget forcing, tokenized with the model's own tokenizer; only for models that think."""
    if not has_thinking_markers(tokenizer):
        return None
    phrase = tokenizer(BUDGET_PHRASE, add_special_tokens=False)["input_ids"]
    return ThinkingBudget(int(BUDGET_FRACTION * max_new_tokens), phrase, single_token_id(tokenizer, THINK_END))


def stop_tokens(tokenizer, generation_config) -> set[int]:
    ids = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids
