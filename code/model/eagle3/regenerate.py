"""Training data in the target's own words: its answers to the first user turn of each conversation, batched.

    python -m model.eagle3.regenerate --target PATH --data sharegpt --output answers.jsonl \
        [--max-samples 2000 --max-new-tokens 512 --batch-size 16 --temperature 0]

Each line is {"input_ids", "loss_mask"}: the templated prompt (mask 0) and the answer exactly as the target produced
it (mask 1, its stop token included), so training sees the token sequences the target really emits (decoding and
re-encoding would not always give them back). `model.eagle3.train --data answers.jsonl` reads it. Resumable: an
existing output file is continued after its last complete line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from tqdm import tqdm

from ..engine.loading import DTYPES, load_model
from ..errors import UserError, report_user_errors
from .data import read_conversations


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m model.eagle3.regenerate", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--data", nargs="+", required=True, help="ShareGPT .json / .jsonl files, or `sharegpt`")
    p.add_argument("--output", required=True, help=".jsonl to write (continued if it exists)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer first turns are skipped")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise UserError("--batch-size and --max-new-tokens must be positive")
    return args


def prompts(sources, tokenizer, max_tokens: int, limit: int | None):
    """Token ids of each conversation's first user turn, templated as a generation prompt."""
    found = []
    for item in read_conversations(sources):
        if isinstance(item, tuple):
            continue   # pre-tokenized lines carry no user turn to answer
        user = next((m for m in item if m["role"] == "user"), None)
        if user is None:
            continue
        text = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True) \
            if getattr(tokenizer, "chat_template", None) else user["content"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if 0 < len(ids) <= max_tokens:
            found.append(ids)
        if limit and len(found) >= limit:
            break
    return found


def complete_lines(path: str) -> int:
    """Complete lines already written; a torn last line (a killed run) is cut off."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        data = f.read()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "wb") as f:
            f.write(keep)
    return keep.count(b"\n")


def regenerate(args) -> int:
    torch.manual_seed(args.seed)
    target, tokenizer, device = load_model(args.target, args.dtype, args.device, flag="--target")
    eos = target.generation_config.eos_token_id
    stop = sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    todo = prompts(args.data, tokenizer, args.max_prompt_tokens, args.max_samples)
    done = complete_lines(args.output)
    written = 0
    with open(args.output, "a") as out:
        for start in tqdm(range(done, len(todo), args.batch_size), desc="regenerate", unit="batch"):
            batch = todo[start:start + args.batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)   # left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            sample = args.temperature > 0
            with torch.inference_mode():
                generated = target.generate(ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                            do_sample=sample, temperature=args.temperature if sample else None,
                                            top_p=None, top_k=None, eos_token_id=stop, pad_token_id=pad)
            for prompt, row in zip(batch, generated[:, width:].tolist()):
                end = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
                answer = row[:end]
                out.write(json.dumps({"input_ids": prompt + answer,
                                      "loss_mask": [0] * len(prompt) + [1] * len(answer)}) + "\n")
                written += 1
            out.flush()
    print(f"{args.output}: {done + written} answers ({written} new)")
    return written


def main(argv=None) -> int:
    return report_user_errors(lambda: regenerate(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
