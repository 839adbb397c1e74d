"""EAGLE-3 training data: the loss mask covers exactly the assistant replies, under templates that render a turn
differently depending on where it stands (Qwen3's empty <think> block on the last assistant turn only)."""
import copy
import functools

import pytest

from conftest import CHAT_TEMPLATE, make_tokenizer
from model.eagle3.data import encode

END = "<|end|>"
# Each turn on its own lines, closed by <|end|> and a newline the model never writes.
CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
# As Qwen3's: a <think>...</think> part of a reply is dropped from earlier turns; the last assistant turn always gets
# a <think> block, empty when the reply has no reasoning.
QWEN3_LIKE = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' %}"
    "{%- set answer = m['content'].split('</think>')[-1].lstrip('\\n') %}"
    "{%- if loop.last %}"
    "{%- set reasoning = m['content'].split('</think>')[0].split('<think>')[-1].strip('\\n')"
    " if '</think>' in m['content'] else '' %}"
    "{{- '<|assistant|>\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + answer + '<|end|>\\n' }}"
    "{%- else %}"
    "{{- '<|assistant|>\\n' + answer + '<|end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}")
TEMPLATES = {"plain": CHAT_TEMPLATE, "chatml": CHATML, "qwen3-like": QWEN3_LIKE}

CONVERSATION = [{"role": "system", "content": "Please reason step by step."},
                {"role": "user", "content": "What is the sum of two and three?"},
                {"role": "assistant", "content": "The answer is 5."},
                {"role": "user", "content": "Previously I tried to solve the problem."},
                {"role": "assistant", "content": "Two and three.\nThe sum is 5."},
                {"role": "user", "content": "And three and two?"},
                {"role": "assistant", "content": "The answer is 5, step by step."}]


@functools.lru_cache(maxsize=None)
def base_tokenizer():
    return make_tokenizer(thinking=True)


def tokenizer_with(template: str, eos: str = END):
    tokenizer = copy.deepcopy(base_tokenizer())
    tokenizer.chat_template = template
    tokenizer.eos_token = eos
    return tokenizer


def masked_texts(tokenizer, ids, mask) -> list[str]:
    """The text of each run of consecutive masked tokens."""
    runs, run = [], []
    for token, masked in zip(ids, mask):
        if masked:
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return [tokenizer.decode(r, clean_up_tokenization_spaces=False) for r in runs]


def encoded(tokenizer, messages):
    ids, mask = encode(tokenizer, messages, 4096)
    assert len(mask) == len(ids)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text   # the whole conversation, unchanged
    return ids, mask


@pytest.mark.parametrize("name", TEMPLATES)
def test_mask_is_every_reply_and_its_end_token_only(name):
    """Nothing of the next user header, of the newline after <|end|>, or of the last turn's empty <think> block."""
    tokenizer = tokenizer_with(TEMPLATES[name])
    ids, mask = encoded(tokenizer, CONVERSATION)
    replies = [m["content"] + END for m in CONVERSATION if m["role"] == "assistant"]
    assert masked_texts(tokenizer, ids, mask) == replies


def test_reasoning_of_the_last_reply_is_trained_on_and_dropped_reasoning_is_not_looked_for():
    """Qwen3 keeps the <think> part of the last reply only: there it is what the model wrote, all of it masked."""
    tokenizer = tokenizer_with(QWEN3_LIKE)
    messages = [{"role": "user", "content": "What is the sum of two and three?"},
                {"role": "assistant", "content": "<think>\nTwo and three.\n</think>\n\nThe answer is 5."},
                {"role": "user", "content": "And three and two?"},
                {"role": "assistant", "content": "<think>\nThree and two.\n</think>\n\nThe sum is 5."}]
    ids, mask = encoded(tokenizer, messages)
    assert masked_texts(tokenizer, ids, mask) == ["The answer is 5." + END,
                                                  "<think>\nThree and two.\n</think>\n\nThe sum is 5." + END]


def test_a_closing_token_that_is_not_the_eos_is_template_text():
    tokenizer = tokenizer_with(QWEN3_LIKE, eos="<eos>")
    ids, mask = encoded(tokenizer, CONVERSATION)
    assert masked_texts(tokenizer, ids, mask) == [m["content"] for m in CONVERSATION if m["role"] == "assistant"]


def test_truncation_keeps_the_mask_aligned():
    tokenizer = tokenizer_with(QWEN3_LIKE)
    ids, mask = encode(tokenizer, CONVERSATION, 4096)
    cut_ids, cut_mask = encode(tokenizer, CONVERSATION, 30)
    assert cut_ids == ids[:30] and cut_mask == mask[:30]
