"""Train an EAGLE-3 head for a target that has none, written in the published layout.

    python -m model.eagle3.train --target PATH --data FILES --output DIR [--minutes 30] [--draft-vocab 32000]
        [--format eagle|speculators] [--ship-embedding]
    python -m model.eagle3.train --convert HEAD --target PATH --output DIR --format speculators   # rewrite a head

Recipe (EAGLE-3 / SpecForge, facts in DESIGN.md):
  * data: conversations (ShareGPT JSON or JSONL, `--data sharegpt` for the wheel), templated with the target's
    chat template; the loss covers the assistant's replies;
  * the target runs once per sequence without gradients: its states at the three chosen layers (side by side)
    and its distribution, restricted to the draft vocabulary and renormalised, as the soft label;
  * several GPUs: `accelerate launch -m model.eagle3.train ...` (data parallel, each process a shard);
  * draft vocabulary: the `--draft-vocab` most frequent target tokens of the replies (d2t / t2d built from it);
    positions whose target argmax lies outside it carry no loss;
  * training-time test: `--ttt-length` (7) unrolled steps. Step 0 row t sees (states at t, token t+1) at position
    t; step k row t sees the draft's own step k-1 output at row t with token t+1+k at position t+k, attends to
    step 0's keys up to t and to its own row's keys of steps 1..k, and is scored against the target's
    distribution at t+1+k. Loss: sum over k of 0.8^k x soft cross-entropy (mean over the scored rows);
  * AdamW (lr 1e-4), linear warm-up then cosine decay, gradient clipping 0.5; the target's embedding is shared
    and frozen. Departure, for CPU-sized budgets: lm_head and the final norm start from the target's own rows
    of the draft vocabulary and final norm (`--random-init` for EAGLE's random start).
The head trains in float32 (its RoPE frequencies too) whatever the target's `--dtype`, and is written in the
target's dtype: `--format eagle` (flat config.json, `midlayer.*`: what EAGLE's own code, SpecForge, SGLang and vLLM
read) or `speculators` (vLLM's speculators layout); checkpoint.py's docstring lists the fields each one carries.
Stops after `--epochs` passes, `--max-samples` sequences or `--minutes`, whichever comes first; a progress bar
shows loss and step-0 accuracy; `train_log.json` beside the weights records the run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections import Counter

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..engine.hidden import HiddenCapture, decoder_layers
from ..engine.loading import DTYPES, load_model
from ..errors import UserError, report_user_errors
from .checkpoint import FORMATS, WEIGHT_FILES, convert_head, default_layers, portability_notes, save_head
from .data import encode, read_conversations
from .head import Eagle3Head, new_head

DECAY = 0.8


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m model.eagle3.train", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="target model: a directory or a hub id")
    p.add_argument("--data", nargs="+", help="ShareGPT .json / .jsonl files, or `sharegpt` (required to train)")
    p.add_argument("--output", required=True, help="directory for config.json + model.safetensors (must be new)")
    p.add_argument("--draft-vocab", type=int, default=32000, help="draft vocabulary size (capped by the target's)")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per training sequence (longer: cut)")
    p.add_argument("--ttt-length", type=int, default=7, help="unrolled training-time-test steps")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-samples", type=int, default=None, help="sequences read from the data (default: all)")
    p.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.015)
    p.add_argument("--grad-clip", type=float, default=0.5)
    p.add_argument("--layers", type=int, nargs=3, default=None,
                   help="target layers whose inputs feed the head (default: 2, L//2, L-3)")
    p.add_argument("--random-init", action="store_true", help="EAGLE's random lm_head instead of the target's rows")
    p.add_argument("--format", default="eagle", choices=FORMATS,
                   help="layout written: eagle (flat: EAGLE, SpecForge, SGLang, vLLM) or speculators (vLLM)")
    p.add_argument("--convert", metavar="HEAD", default=None,
                   help="instead of training: rewrite the head HEAD (a directory or hub id, any layout read here) "
                        "for --target in --format to --output")
    p.add_argument("--ship-embedding", action="store_true",
                   help="also write the target's input embedding into the head (for EAGLE's own loader with a "
                        "single-file target, which it cannot take the embedding from)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="the target's dtype while training")
    p.add_argument("--bf16-autocast", action="store_true",
                   help="run the target and the head's matrix products in bfloat16 (weights stay float32)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data and not args.convert:
        raise UserError("--data is required to train (or --convert HEAD to rewrite an existing head)")
    for flag in ("draft_vocab", "max_length", "ttt_length", "epochs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if any(os.path.exists(os.path.join(args.output, name)) for name in WEIGHT_FILES):
        raise UserError(f"--output {args.output} already holds a head; choose a new directory")
    return args


def load_sequences(sources, tokenizer, max_length: int, max_samples: int | None):
    """(ids, assistant mask) per conversation (or pre-tokenized line) with at least one scored token."""
    sequences = []
    bar = tqdm(total=max_samples, desc="reading and templating conversations", unit="conv", mininterval=2)
    for item in read_conversations(sources):
        if isinstance(item, tuple):   # pre-tokenized
            ids, mask = item[0][:max_length], item[1][:max_length]
        else:
            try:
                ids, mask = encode(tokenizer, item, max_length)
            except Exception:  # noqa: BLE001 - a template that rejects this conversation's roles: skip it
                continue
        if len(ids) >= 3 and any(mask[2:]):
            sequences.append((ids, mask))
            bar.update()
        if max_samples and len(sequences) >= max_samples:
            break
    bar.close()
    if not sequences:
        raise UserError(f"no conversation in {' '.join(sources)} has an assistant reply to learn from")
    return sequences


def draft_vocabulary(sequences, size: int, vocab: int) -> torch.Tensor:
    """The `size` most frequent reply tokens, topped up with the lowest unused ids when the data has fewer."""
    counts = Counter(t for ids, mask in sequences for t, m in zip(ids, mask) if m)
    chosen = [t for t, _ in counts.most_common(size)]
    taken = set(chosen)
    chosen += [t for t in range(vocab) if t not in taken][: size - len(chosen)]
    return torch.tensor(sorted(chosen))


def ttt_attention(attn, q, keys, values) -> torch.Tensor:
    """Step k's attention: step 0's keys causally, plus only the same row's key of each later step.

    The later steps' keys are diagonal, so they are scored row by row (q . k_i) rather than as k more dense
    [rows, rows] blocks: one softmax over the causal scores and the k diagonal scores together."""
    groups = attn.heads // attn.kv_heads
    expand = (lambda t: t.repeat_interleave(groups, dim=1)) if groups > 1 else (lambda t: t)
    scale = attn.head_dim ** -0.5
    rows = q.shape[2]
    causal = torch.ones(rows, rows, dtype=torch.bool, device=q.device).tril()
    dense = (q @ expand(keys[0]).transpose(-1, -2) * scale).masked_fill(~causal, float("-inf"))
    diagonal = [((q * expand(k)).sum(-1, keepdim=True) * scale) for k in keys[1:]]
    weights = torch.cat([dense] + diagonal, dim=-1).softmax(-1, dtype=torch.promote_types(q.dtype, torch.float32))
    weights = weights.to(q.dtype)
    out = weights[..., :rows] @ expand(values[0])
    for i, v in enumerate(values[1:]):
        out = out + weights[..., rows + i: rows + i + 1] * expand(v)
    b, _, n, _ = out.shape
    return attn.o_proj(out.transpose(1, 2).reshape(b, n, attn.heads * attn.head_dim))


def ttt_loss(head: Eagle3Head, embedding, features, ids, target_p, scored, steps: int):
    """Weighted loss and per-step accuracy of one sequence. features [T, 3H]; target_p [T, Vd]; scored [T] bool."""
    T = len(ids)
    rows = T - 1
    attn, layer = head.midlayer.self_attn, head.midlayer
    hidden = head.project(features[:rows])
    keys, values, total, accuracy = [], [], 0.0, []
    positions = torch.arange(rows, device=ids.device)
    for k in range(steps):
        valid = rows - k                       # rows whose token t+1+k exists
        if valid <= 0:
            break
        tokens = F.pad(ids[1 + k:], (0, k))    # token t+1+k, zero past the end (never scored)
        x = layer.attention_input(embedding(tokens), hidden)[None]
        cos, sin = head.rope(x, (positions + k)[None])
        q, key, value = attn.project(x, cos, sin)
        keys.append(key)
        values.append(value)
        out = ttt_attention(attn, q, keys, values)
        hidden = head.carry(layer.finish(hidden, out[0]))
        logits = head.logits(hidden)[:valid].float()
        p = target_p[1 + k:]
        weight = scored[1 + k:].float()
        n = weight.sum().clamp_min(1)
        total = total + DECAY ** k * -(weight[:, None] * p * F.log_softmax(logits, -1)).sum() / n
        hits = (logits.argmax(-1) == p.argmax(-1)).float()
        accuracy.append(float((hits * weight).sum() / n))
    return total, accuracy


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` of the run, then cosine decay to 0 (progress in [0, 1])."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


class TrainingTimeTest(torch.nn.Module):
    """The head with its training loss as `forward`, so accelerate's data-parallel wrapper sees every step."""

    def __init__(self, head: Eagle3Head, embedding, steps: int):
        super().__init__()
        self.head, self.steps = head, steps
        self.embed = lambda ids: embedding(ids).to(head.fc.weight.dtype)   # the target's, frozen, not a submodule

    def forward(self, features, ids, target_p, scored):
        return ttt_loss(self.head, self.embed, features, ids, target_p, scored, self.steps)


def training_head(target, draft_ids: torch.Tensor, layers: tuple[int, ...], random_init: bool) -> Eagle3Head:
    """A new head trained in float32 whatever the target's dtype (RoPE frequencies float32 too, as loaded later).
    Unless `random_init`, lm_head and the final norm start from the target's own rows and final norm."""
    head = new_head(target, draft_ids, len(layers)).float()
    if not random_init:
        with torch.no_grad():
            head.lm_head.weight.copy_(target.get_output_embeddings().weight[draft_ids].float())
            final_norm = getattr(target.get_decoder(), "norm", None)
            if final_norm is not None and final_norm.weight.shape == head.norm.weight.shape:
                head.norm.weight.copy_(final_norm.weight.float())
    return head


def train(args) -> dict:
    from accelerate import Accelerator
    torch.manual_seed(args.seed)
    # One process per GPU under `accelerate launch`; a plain run is one process on --device.
    accelerator = Accelerator(cpu=args.device == "cpu" or not torch.cuda.is_available())
    device_name = str(accelerator.device) if accelerator.num_processes > 1 else args.device
    target, tokenizer, device = load_model(args.target, args.dtype, device_name, flag="--target")
    target.requires_grad_(False)
    num_layers = len(decoder_layers(target))
    layers = tuple(args.layers) if args.layers else default_layers(num_layers)
    if not all(0 <= i < num_layers for i in layers):
        raise UserError(f"--layers {list(layers)} must lie in 0..{num_layers - 1}")
    vocab = target.get_input_embeddings().weight.shape[0]
    started = time.time()
    sequences = load_sequences(args.data, tokenizer, args.max_length, args.max_samples)
    draft_ids = draft_vocabulary(sequences, min(args.draft_vocab, vocab), vocab).to(device)
    head = training_head(target, draft_ids, layers, args.random_init)
    head.train()
    model = TrainingTimeTest(head, target.get_input_embeddings(), args.ttt_length)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    shard = list(range(accelerator.process_index, len(sequences), accelerator.num_processes))
    total_steps = len(shard) * args.epochs
    capture = HiddenCapture(target, layers)
    rng = random.Random(args.seed)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16_autocast else \
        contextlib.nullcontext
    train_start = time.time()
    deadline = train_start + 60 * args.minutes if args.minutes else None
    log = {"samples": 0, "tokens": 0, "scored_tokens": 0, "step": 0}
    recent_loss, recent_acc = [], []
    # The bar ends where the run ends: with a time budget it counts the budget's seconds (the sequences reached so
    # far ride in the postfix), else the sequences.
    if deadline:
        bar = tqdm(total=round(60 * args.minutes), desc=f"eagle3 train ({args.minutes:g} min budget)", unit="s",
                   dynamic_ncols=True, mininterval=5, disable=not accelerator.is_main_process,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}{postfix}]")
    else:
        bar = tqdm(total=total_steps, desc="eagle3 train", unit="seq", dynamic_ncols=True, mininterval=5,
                   disable=not accelerator.is_main_process)
    try:
        for _epoch in range(args.epochs):
            order = list(shard)
            rng.shuffle(order)
            for index in order:
                if deadline and time.time() > deadline:
                    raise TimeoutError
                ids_list, mask_list = sequences[index]
                ids = torch.tensor(ids_list, device=device)
                with torch.no_grad(), autocast():
                    logits = target(input_ids=ids[None]).logits[0]
                    features = capture.take().float()
                    in_draft = head.t2d[logits.argmax(-1)]
                    target_p = logits[:, draft_ids].float().softmax(-1)
                scored = torch.tensor(mask_list, device=device) & in_draft
                # Progress by steps, or by time when the time budget ends the run first.
                progress = log["step"] / total_steps
                if deadline:
                    progress = max(progress, (time.time() - train_start) / (deadline - train_start))
                for group in optimizer.param_groups:
                    group["lr"] = args.lr * lr_factor(progress, args.warmup_ratio)
                with autocast():
                    loss, accuracy = model(features, ids, target_p, scored)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(head.parameters(), args.grad_clip)
                optimizer.step()
                log["step"] += 1
                log["samples"] += 1
                log["tokens"] += len(ids_list)
                log["scored_tokens"] += int(scored.sum())
                recent_loss, recent_acc = (recent_loss + [loss.item()])[-50:], (recent_acc + [accuracy])[-50:]
                bar.update(min(time.time(), deadline) - train_start - bar.n if deadline else 1)
                bar.set_postfix(seq=f"{log['step']}/{total_steps}",
                                loss=f"{sum(recent_loss) / len(recent_loss):.3f}",
                                acc0=f"{sum(a[0] for a in recent_acc) / len(recent_acc):.3f}", refresh=False)
    except TimeoutError:
        pass
    finally:
        bar.close()
        capture.remove()
    accelerator.wait_for_everyone()
    steps = max(len(a) for a in recent_acc) if recent_acc else 0
    log.update(loss=sum(recent_loss) / max(1, len(recent_loss)),
               accuracy=[sum(a[k] for a in recent_acc if len(a) > k) / max(1, sum(len(a) > k for a in recent_acc))
                         for k in range(steps)],
               seconds=time.time() - started, sequences_read=len(sequences), draft_vocab=len(draft_ids),
               layers=list(layers), target=args.target, data=args.data, ttt_length=args.ttt_length, lr=args.lr,
               max_length=args.max_length, processes=accelerator.num_processes,
               head_parameters=sum(p.numel() for p in head.parameters()), command=" ".join(sys.argv))
    if accelerator.is_main_process:
        head.eval()
        embedding = target.get_input_embeddings().weight if args.ship_embedding else None
        save_head(head.to(target.dtype), layers, args.output, args.format, target_name=args.target,
                  embedding=embedding, speculative_tokens=args.ttt_length)
        for note in portability_notes(head, layers, num_layers, args.format):
            print(f"note: {note}", file=sys.stderr)
        with open(os.path.join(args.output, "train_log.json"), "w") as f:
            json.dump(log, f, indent=2)
        print(f"head: {args.output} ({log['samples']} sequences, {log['tokens']} tokens, {log['seconds']:.0f} s; "
              f"last-50 step-0 accuracy {log['accuracy'][0] if log['accuracy'] else 0:.3f})")
    return log


def run(args) -> None:
    if args.convert:
        print(convert_head(args.convert, args.target, args.output, args.format, args.ship_embedding))
    else:
        train(args)


def main(argv=None) -> int:
    return report_user_errors(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
