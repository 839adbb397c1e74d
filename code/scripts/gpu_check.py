"""GPU check: every method lossless on the device, and what the real model shapes cost there. No hub access.

Models are random-initialised from configs written below with the real shapes of Qwen3-8B and Llama-3.1-8B (their
usual drafts: Qwen3-0.6B, Llama-3.2-1B), built directly on the device. Their final norm is scaled up (as the tests
scale the lm_head) so their distributions are sharp like a real LM's. A target whose greedy output falls into one
token repeated gets its embeddings raised against the layers' sum until it does not (avoid_degeneracy).

 (a) correctness: on a small random model of each family (4 layers, --check-dtype, default float32) on the device,
     every method's greedy output is token-identical to AR (our engine with no drafter), on a random and a
     repetitive prompt; and AR itself equals transformers `generate` (its own cache and masks). On a divergence
     the AR logit margin at that position tells a near-tie (rounding) from a bug.
 (c) half precision: on random models of SmolLM2-135M's size (--tiny: the small ones of (a)) of each family, in
     float16 and bfloat16 (--half-dtypes), two rounds per prompt (round 2 = round 1's prompt + its output + a fixed
     request, as multi-round thinking quotes the previous answer), AR with its near-ties recorded, then every method;
     each differing turn classified as evaluation/reports/divergence.py classifies the answer files (near-tie /
     inherited / unexplained). Any unexplained divergence fails the check.
 (b) measurements on each real shape in bfloat16 (with --tiny: tiny shapes of the same families): our AR tokens/s
     against transformers `generate` (greedy, eos disabled) on the same prompt (with the shape's real tokenizer, when
     `make tokenizers` has built it: a real question in its chat template followed by real reasoning, and a check
     that the thinking budget forces its real phrase; else random ids); the forward cost t(n)/t(1),
     n = 1..--max-width, at each --contexts length (model.engine.profile.ForwardCostProfile); each method's MAT and
     drafting share (draft seconds / (draft + verify seconds)) on one generation; a batch-size sweep
     (--batch-sizes): AR's batch throughput against B, each method's throughput over AR's at the same B. Random
     weights: MAT and speedups there say little about a trained model; costs, shares, the AR/HF ratio and AR's
     batching gain are what count.
MAT counts the bonus token (AR = 1.00). Exit status 1 when any method is not identical to AR in (a), or AR differs
from transformers `generate` other than at a near-tie, or a half-precision turn differs unexplained in (c); 2 when
--device cuda has no CUDA device.

    cd code && python scripts/gpu_check.py --device cuda --json-out gpu_check.json
    cd code && python scripts/gpu_check.py --device cpu --tiny --contexts 64 256       # smoke run anywhere
"""
from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.reports import divergence  # noqa: E402
from model.eagle3 import Eagle3Drafter  # noqa: E402
from model.eagle3.checkpoint import default_layers  # noqa: E402
from model.eagle3.head import new_head  # noqa: E402
from model.engine import Drafter, SamplingConfig, SpeculativeEngine  # noqa: E402
from model.engine.attention import use_grouped_sdpa  # noqa: E402
from model.engine.profile import ForwardCostProfile  # noqa: E402
from model.lade import LookaheadDrafter  # noqa: E402
from model.pia.drafter import PiaDrafter  # noqa: E402
from model.pld import PromptLookupDrafter  # noqa: E402
from model.recycling import TokenRecyclingDrafter  # noqa: E402
from model.rest.datastore import Datastore  # noqa: E402
from model.rest.drafter import RestDrafter  # noqa: E402
from model.samd.drafter import SamDrafter  # noqa: E402
from model.samd.static_sam import join_documents  # noqa: E402
from model.sps import DraftModelDrafter  # noqa: E402
from model.stand import StandDrafter  # noqa: E402
from model.suffix.drafter import SuffixDrafter  # noqa: E402

METHODS = ("pld", "samd", "recycling", "lookahead", "pia", "stand", "rest", "sps", "eagle3", "samd-eagle3")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOGIT_SCALE = 8.0   # final-norm gain: sharper distributions (SpS's confidence stop, sampling); greedy is unchanged
NEAR_TIE = 1e-3       # |logit gap| under which a float32 divergence from transformers counts as rounding
EMBEDDING_RATIOS = (2.0, 3.0, 4.0, 6.0)   # token embedding / layers' sum, tried in turn: avoid_degeneracy

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# name -> (model_type, target config, SpS draft config): the published config.json values that shape the compute.
SHAPES = {
    "qwen3-8b": ("qwen3",
                 dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, intermediate_size=12288, vocab_size=151936, rope_theta=1000000.0,
                      max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      bos_token_id=151643, eos_token_id=151645),
                 # Qwen3-0.6B
                 dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                      head_dim=128, intermediate_size=3072, vocab_size=151936, rope_theta=1000000.0,
                      max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      bos_token_id=151643, eos_token_id=151645)),
    "llama-3.1-8b": ("llama",
                     dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          head_dim=128, intermediate_size=14336, vocab_size=128256, rope_parameters=LLAMA3_ROPE,
                          max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                          bos_token_id=128000, eos_token_id=128001),
                     # Llama-3.2-1B
                     dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                          head_dim=64, intermediate_size=8192, vocab_size=128256,
                          rope_parameters=dict(LLAMA3_ROPE, factor=32.0), max_position_embeddings=131072,
                          rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001)),
}
# Small stand-ins of the same families: the correctness models, and the measured models under --tiny.
SMALL = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=128, vocab_size=512, max_position_embeddings=16384, bos_token_id=0, eos_token_id=1)
SMALL_DRAFT = dict(SMALL, hidden_size=32, num_hidden_layers=2, intermediate_size=64, head_dim=8,
                   tie_word_embeddings=True)
# (c)'s models without --tiny: deeper and wider than SMALL, so that half-precision rounding builds up as in a real
# model and near-ties occur (SmolLM2-135M's size).
MEDIUM = dict(SMALL, hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
              intermediate_size=1536, vocab_size=49152)
EAGLE_DRAFT_VOCAB = 32000   # the draft vocabulary of the published EAGLE-3 heads for these targets
# The tokenizer each real shape is measured with when `make tokenizers` has built it (model/vocab): its vocabulary
# sizes the check, a real question in its chat template (then real reasoning) is the prompt, and the thinking budget
# forces its own tokens. DeepSeek-R1-Distill-Llama-8B has Llama-3.1-8B's shape.
SHAPE_TOKENIZERS = {"qwen3-8b": "qwen3", "llama-3.1-8b": "deepseek-r1-distill-llama"}


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def small_config(shape: str, draft: bool = False, size: dict = SMALL) -> tuple[str, dict]:
    family, target, draft_config = SHAPES[shape]
    keep = ("rope_theta", "rope_parameters", "rms_norm_eps", "tie_word_embeddings")
    base = {k: v for k, v in (draft_config if draft else target).items() if k in keep}
    return family, {**base, **(SMALL_DRAFT if draft else size)}


def make_model(family: str, config: dict, dtype: torch.dtype, device: torch.device, seed: int,
               check_output: bool = True):
    """A random-initialised causal LM created on `device` (no CPU copy of an 8B model), final norm scaled up;
    `check_output`: embeddings raised when its greedy output is degenerate (not for drafts: a tied random model
    repeats its input token the more, the more its embedding dominates)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(family, **config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    use_grouped_sdpa(model)   # as load_model does for runs
    with torch.no_grad():   # the final norm, not lm_head: a tied lm_head is also the input embedding
        model.get_decoder().norm.weight.mul_(LOGIT_SCALE)
    model.generation_config.eos_token_id = None   # random weights: never stop early, in our engine or in HF's
    model.generation_config.pad_token_id = None
    model.embedding_ratio = avoid_degeneracy(model, seed) if check_output else None
    return model


def avoid_degeneracy(model, seed: int, tokens: int = 32) -> float | None:
    """Greedy output of the default init, on two random prompts, may fall into one token repeated (the layers' sum
    swamps the token embedding: small widths do that). Then raise the embedding to EMBEDDING_RATIOS[i] times the
    layers' sum until it does not. Returns the ratio used (None: the default init, also when nothing helped)."""
    vocab = vocab_of(model)
    prompts = [torch.randint(2, vocab - 1, (24,), generator=torch.Generator().manual_seed(seed + i)).tolist()
               for i in range(2)]
    scale = 1.0
    for ratio in (None,) + EMBEDDING_RATIOS:
        if ratio is not None:
            scale *= balance_embeddings(model, seed, ratio)
        outputs = [greedy(model, p, tokens) for p in prompts]
        if not any(degeneracy(out, strict=True)["degenerate"] for out in outputs):
            return ratio
    with torch.no_grad():
        model.get_input_embeddings().weight.div_(scale)
    log(f"warning: greedy output of a random {model.config.model_type} model is degenerate at every embedding "
        f"ratio tried; keeping the default init")
    return None


@torch.inference_mode()
def greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@torch.inference_mode()
def balance_embeddings(model, seed: int, ratio: float, rounds: int = 3) -> float:
    """Scale the input embeddings to `ratio` times the RMS of what the decoder layers add to the residual stream
    (measured at the final norm on a random 64-token input); returns the factor applied. With the token's own
    embedding dominant the next token still depends on the context (less so as the ratio grows)."""
    vocab = vocab_of(model)
    ids = torch.randint(2, vocab - 1, (1, 64), generator=torch.Generator().manual_seed(seed)).to(model.device)
    embedding = model.get_input_embeddings()
    seen, factor = {}, 1.0
    hook = model.get_decoder().norm.register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    try:
        for _ in range(rounds):
            e = embedding(ids).float()
            model(input_ids=ids, logits_to_keep=1)
            now = float(e.pow(2).mean().sqrt() / (seen["x"].float() - e).pow(2).mean().sqrt())
            if abs(now / ratio - 1) < 0.05:
                break
            embedding.weight.mul_(ratio / now)
            factor *= ratio / now
    finally:
        hook.remove()
    return factor


def vocab_of(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def noisy_draft(target, scale: float = 0.3, padding: int = 16, seed: int = 0):
    """A draft that agrees with the target often but not always (the target's weights plus noise), with extra
    embedding rows as Qwen3-0.6B pads its vocabulary differently from Qwen3-8B: as tests/methods.py."""
    draft = copy.deepcopy(target)
    g = torch.Generator(device=target.device).manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype, device=p.device) * scale * p.std())
    draft.resize_token_embeddings(vocab_of(target) + padding, mean_resizing=False)
    return draft.eval()


def random_head(model, draft_vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    return new_head(model, torch.arange(min(draft_vocab, vocab_of(model)))).eval()


def build_methods(model, corpus, draft, head, small: bool, only=None) -> dict:
    """Every method's drafter, built as its CLI builds it. `small`: the correctness settings of tests/methods.py
    (a 6-token SpS chain, a wide shallow EAGLE-3 tree that a random head gets accepted now and then); else the
    seed's defaults (SpS 20 tokens / confidence 0.4, EAGLE-3 total 60, depth 5, top-k 10)."""
    vocab = vocab_of(model)
    separator = vocab - 1
    layers = default_layers(model.config.num_hidden_layers)
    embedding = model.get_input_embeddings()

    def eagle():
        if small:
            return Eagle3Drafter(head, embedding, layers, total_tokens=60, depth=3, top_k=min(64, vocab))
        return Eagle3Drafter(head, embedding, layers)

    if only is not None:   # model-free ones only: no draft model or head needed
        built = {"pld": PromptLookupDrafter, "samd": SamDrafter, "recycling": lambda: TokenRecyclingDrafter(vocab),
                 "lookahead": LookaheadDrafter, "pia": PiaDrafter, "suffix": SuffixDrafter}
        return {name: built[name]() for name in only}
    return {
        "pld": PromptLookupDrafter(),
        "samd": SamDrafter(),
        "recycling": TokenRecyclingDrafter(vocab),
        "lookahead": LookaheadDrafter(),
        "pia": PiaDrafter(),
        "stand": StandDrafter(vocab),
        "rest": RestDrafter(Datastore.build(join_documents(corpus, separator), separator, "gpu-check", "gpu-check")),
        "sps": DraftModelDrafter(draft, vocab, num_tokens=6) if small else DraftModelDrafter(draft, vocab),
        "eagle3": eagle(),
        "samd-eagle3": SamDrafter(alpha=1e9, fallback=eagle()),
    }


def chunks(tokens: list[int]) -> list[list[int]]:
    """REST's corpus: 8-token pieces of the answer every 5 tokens (text like the answer, never the answer whole)."""
    return [tokens[i:i + 8] for i in range(0, len(tokens), 5)]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def logit_margin(model, prompt, reference, out, at: int) -> float | None:
    """AR's logit of its own token minus that of the method's token at the first divergence (plain forward)."""
    if at >= min(len(reference), len(out)):
        return None
    ids = torch.tensor([prompt + reference[:at]], device=model.device)
    logits = model(input_ids=ids).logits[0, -1].double()
    return float(logits[reference[at]] - logits[out[at]])


def degeneracy(tokens: list[int], strict: bool = False) -> dict:
    """Degenerate: one token repeated over half the output, or at most 2 distinct tokens (strict: a run of more
    than 3, or fewer than a quarter distinct)."""
    longest, run = 0, 0
    for i, t in enumerate(tokens):
        run = run + 1 if i and t == tokens[i - 1] else 1
        longest = max(longest, run)
    distinct = len(set(tokens))
    if strict:
        bad = longest > 3 or distinct < len(tokens) / 4
    else:
        bad = len(tokens) > 8 and (distinct <= 2 or longest > len(tokens) // 2)
    return {"distinct": distinct, "longest_run": longest, "degenerate": bad}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- (a) correctness ------------------------------------------------------------------------------------------

def check_correctness(shape: str, device, dtype, new_tokens: int, seed: int, mode: str = "eager") -> dict:
    family, config = small_config(shape)
    model = make_model(family, config, dtype, device, seed)
    ratio = model.embedding_ratio
    vocab = vocab_of(model)
    engine = SpeculativeEngine(model, mode=mode)
    random_prompt = torch.randint(2, vocab - 1, (12,), generator=torch.Generator().manual_seed(seed)).tolist()
    # A repetitive prompt the model itself would write: X, its own continuation Y, then X again.
    echo = engine.generate(random_prompt, Drafter(), 24, SamplingConfig()).tokens
    prompts = {"random": random_prompt, "repeat": random_prompt + echo + random_prompt}
    references = {name: engine.generate(p, Drafter(), new_tokens, SamplingConfig()).tokens
                  for name, p in prompts.items()}
    for name, ref in references.items():
        d = degeneracy(ref)
        if d["degenerate"]:
            log(f"  warning: {family} small model's AR output on the {name} prompt is degenerate: {d}")
    # The reference itself: transformers' own greedy decoding (its cache and masks, not ours) in the same dtype.
    # A difference at a near-tie (|AR logit margin| < NEAR_TIE) is rounding, not a bug.
    hf = {"identical": True, "tokens": 0, "steps": 0, "divergences": []}
    for name, prompt in prompts.items():
        out, _ = hf_generate(model, prompt, new_tokens, device)
        hf["tokens"] += len(out)
        hf["steps"] += len(out)
        if out != references[name]:
            hf["identical"] = False
            at = first_divergence(references[name], out)
            hf["divergences"].append({"prompt": name, "position": at, "ar_logit_margin":
                                      logit_margin(model, prompt, references[name], out, at)})
    hf["mat"] = 1.0
    hf["near_tie_only"] = all(d["ar_logit_margin"] is not None and abs(d["ar_logit_margin"]) < NEAR_TIE
                              for d in hf["divergences"])
    log(f"  {family} transformers generate: {'identical' if hf['identical'] else 'DIFFERS'}")
    draft = noisy_draft(model)
    head = random_head(model, vocab)
    rows = {}
    for method in METHODS:
        tokens = steps = drafted = 0
        identical, divergences = True, []
        for name, prompt in prompts.items():
            reference = references[name]
            drafter = build_methods(model, chunks(reference), draft, head, small=True)[method]
            gen = engine.generate(prompt, drafter, new_tokens, SamplingConfig())
            tokens += len(gen.tokens)
            steps += len(gen.steps)
            drafted += sum(s.accepted > 1 for s in gen.steps)
            if gen.tokens != reference:
                identical = False
                at = first_divergence(reference, gen.tokens)
                divergences.append({"prompt": name, "position": at,
                                    "ar_logit_margin": logit_margin(model, prompt, reference, gen.tokens, at)})
        rows[method] = {"identical": identical, "mat": tokens / steps, "tokens": tokens, "steps": steps,
                        "steps_with_accepted_draft": drafted, "divergences": divergences}
        log(f"  {family} {method}: {'identical' if identical else 'DIFFERS'}, MAT {tokens / steps:.2f}")
    del model, draft, head, engine
    free(device)
    return {"family": family, "config": config, "embedding_ratio": ratio, "rows": rows, "transformers": hf}


# --- (c) half precision --------------------------------------------------------------------------------------

def two_rounds(engine, prompt: list[int], drafter, new_tokens: int, request: list[int]) -> dict:
    """Two greedy rounds, the second prompted with the first's prompt + output + `request`, as an answer file's
    choice: token ids, prompt hashes and, when the engine records margins, near-ties per turn. The drafter keeps
    its state across the rounds (question scope)."""
    turn = {"turns": [], "token_ids": [], "new_tokens": [], "wall_time": [], "prompt_sha1": [], "near_ties": []}
    for _ in range(2):
        gen = engine.generate(prompt, drafter, new_tokens, SamplingConfig())
        for key, value in (("turns", ""), ("token_ids", gen.tokens), ("new_tokens", len(gen.tokens)),
                           ("wall_time", gen.seconds), ("prompt_sha1", hashlib.sha1(str(prompt).encode()).hexdigest()),
                           ("near_ties", None if gen.margins is None else divergence.near_ties(gen.margins))):
            turn[key].append(value)
        prompt = prompt + gen.tokens + request
    if not engine.record_margins:
        del turn["near_ties"]
    return turn


def check_half_precision(shape: str, device, dtype_name: str, new_tokens: int, seed: int, tiny: bool = False) -> dict:
    """(c): AR (near-ties recorded) and every method on a MEDIUM (`tiny`: SMALL) model in `dtype_name`, two rounds
    per prompt; the divergence classes per method (reports/divergence.py)."""
    family, config = small_config(shape, size=SMALL if tiny else MEDIUM)
    model = make_model(family, config, DTYPES[dtype_name], device, seed)
    vocab = vocab_of(model)
    plain, recording = SpeculativeEngine(model), SpeculativeEngine(model, record_margins=True)
    generator = torch.Generator().manual_seed(seed)
    random_prompt = torch.randint(2, vocab - 1, (12,), generator=generator).tolist()
    request = torch.randint(2, vocab - 1, (8,), generator=generator).tolist()
    echo = plain.generate(random_prompt, Drafter(), 24, SamplingConfig()).tokens
    prompts = [random_prompt, random_prompt + echo + random_prompt]
    base = [{"question_id": i, "choices": [two_rounds(recording, p, Drafter(), new_tokens, request)]}
            for i, p in enumerate(prompts)]
    base_config = {"temperature": 0.0, "near_tie_rule": divergence.near_tie_rule(dtype_name)}
    draft, head = noisy_draft(model), random_head(model, vocab)
    rows = {}
    for method in METHODS:
        answers = []
        for i, p in enumerate(prompts):
            reference = base[i]["choices"][0]["token_ids"][0]
            drafter = build_methods(model, chunks(reference), draft, head, small=True)[method]
            answers.append({"question_id": i, "choices": [two_rounds(plain, p, drafter, new_tokens, request)]})
        result = divergence.classify(answers, base, {"temperature": 0.0}, base_config)
        rows[method] = {"counts": result["counts"], "n_turns": result["n_turns"],
                        "unexplained": divergence.unexplained_lines(method, result)}
        log(f"  {family} {dtype_name} {method}: {divergence.counts_cell(result)} "
            "(identical / near-tie / inherited / unexplained)")
    del model, draft, head, plain, recording
    free(device)
    return {"family": family, "dtype": dtype_name, "config": config, "factor": divergence.NEAR_TIE_FACTOR,
            "rows": rows}


def print_half_precision(checks: dict, new_tokens: int) -> None:
    keys = list(checks)
    size = "hidden {hidden_size}, {num_hidden_layers} layers, vocab {vocab_size}".format(**checks[keys[0]]["config"])
    print(f"\n## (c) Half precision: divergence from AR (random models, {size}; 2 prompts x 2 rounds x {new_tokens} "
          f"tokens, greedy); identical / near-tie / inherited / unexplained turns; near-tie = AR's top-1/top-2 "
          f"margin at the first differing token < {divergence.NEAR_TIE_FACTOR:g} x eps(dtype) x |top-1 logit|\n")
    header = ["Method"] + [f"{checks[k]['family']} {checks[k]['dtype']}" for k in keys]
    rows = []
    for method in METHODS:
        cells = [method]
        for k in keys:
            c = checks[k]["rows"][method]["counts"]
            cells.append(f"{c['identical']} / {c['near_tie']} / {c['inherited']} / {c['unexplained']}"
                         + (f" (+{c['unclassified']} unclassified)" if c["unclassified"] else ""))
        rows.append(cells)
    print(table(header, rows))
    for k in keys:
        for method in METHODS:
            for line in checks[k]["rows"][method]["unexplained"]:
                print(f"- {checks[k]['family']} {checks[k]['dtype']}: {line}")


# --- (b) measurements -----------------------------------------------------------------------------------------

def timed_ar(engine, prompt, n):
    start = engine.clock()
    gen = engine.generate(prompt, Drafter(), n, SamplingConfig())
    return gen, engine.clock() - start


def hf_generate(model, prompt, n, device, rows: int = 1, **kwargs):
    """transformers' own greedy generate of `rows` copies of the prompt (eos off), timed; `kwargs` go to generate."""
    ids = torch.tensor([prompt] * rows, device=device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs)
    sync(device)
    return out[0, len(prompt):].tolist(), time.perf_counter() - start


def measure_shape(shape: str, args, device) -> dict:
    family, target_config, draft_config = SHAPES[shape]
    if args.tiny:
        family, target_config = small_config(shape)
        draft_config = small_config(shape, draft=True)[1]
    elif args.num_layers:
        target_config = dict(target_config, num_hidden_layers=args.num_layers)
    dtype = torch.bfloat16
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    model = make_model(family, target_config, dtype, device, args.seed)
    draft = make_model(family, draft_config, dtype, device, args.seed + 1, check_output=False)
    head = random_head(model, EAGLE_DRAFT_VOCAB, args.seed + 2)
    log(f"{shape}: target, SpS draft and EAGLE-3 head created in {time.perf_counter() - start:.1f} s "
        f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B target parameters)")
    vocab = vocab_of(model)
    engine = SpeculativeEngine(model)
    tokenizer = None if args.tiny else real_tokenizer(shape, vocab)
    if tokenizer is not None:
        prompt = real_prompt(tokenizer, args.prompt_len)
    else:
        prompt = torch.randint(2, vocab - 1, (args.prompt_len,),
                               generator=torch.Generator().manual_seed(args.seed + 3)).tolist()
    result = {"family": family, "config": target_config, "draft_config": draft_config, "dtype": "bfloat16",
              "embedding_ratio": model.embedding_ratio, "tokenizer": SHAPE_TOKENIZERS[shape] if tokenizer else None,
              "prompt_len": len(prompt), "new_tokens": args.new_tokens}
    if tokenizer is not None:
        result["thinking_budget"] = check_budget(engine, prompt, tokenizer)

    # AR (ours) against transformers generate.
    timed_ar(engine, prompt, 16)
    hf_generate(model, prompt, 16, device)
    ar, ar_seconds = timed_ar(engine, prompt, args.new_tokens)
    hf_tokens, hf_seconds = hf_generate(model, prompt, args.new_tokens, device)
    ar_tps, hf_tps = len(ar.tokens) / ar_seconds, len(hf_tokens) / hf_seconds
    at = first_divergence(ar.tokens, hf_tokens)
    result["ar"] = {"tokens": len(ar.tokens), "seconds": ar_seconds, "tokens_per_s": ar_tps,
                    "output": degeneracy(ar.tokens)}
    result["hf"] = {"tokens": len(hf_tokens), "seconds": hf_seconds, "tokens_per_s": hf_tps,
                    "agrees_with_ar_for": len(ar.tokens) if at is None else at}
    log(f"{shape}: AR {ar_tps:.1f} tok/s, transformers generate {hf_tps:.1f} tok/s "
        f"(outputs agree for {result['hf']['agrees_with_ar_for']}/{len(ar.tokens)} tokens)")
    if result["ar"]["output"]["degenerate"]:
        log(f"{shape}: warning: AR output is degenerate: {result['ar']['output']}")

    # Forward cost t(n)/t(1).
    start = time.perf_counter()
    profile = ForwardCostProfile.measure(engine, args.max_width, args.contexts, repeats=args.repeats)
    result["profile"] = profile.to_dict()
    log(f"{shape}: forward cost profile measured in {time.perf_counter() - start:.1f} s")

    # Each method: MAT and drafting share on the same random prompt.
    drafters = build_methods(model, chunks(ar.tokens), draft, head, small=False)
    methods = {}
    for name, drafter in drafters.items():
        engine.generate(prompt, drafter, 16, SamplingConfig())   # warm-up: first-call costs, kernels for the shapes
        drafter.reset()
        start = engine.clock()
        gen = engine.generate(prompt, drafter, args.new_tokens, SamplingConfig())
        seconds = engine.clock() - start
        draft_s = sum(s.draft_seconds for s in gen.steps)
        verify_s = sum(s.verify_seconds for s in gen.steps)
        methods[name] = {"tokens": len(gen.tokens), "steps": len(gen.steps), "mat": len(gen.tokens) / len(gen.steps),
                         "draft_seconds": draft_s, "verify_seconds": verify_s,
                         "drafting_share": draft_s / (draft_s + verify_s), "seconds": seconds,
                         "tokens_per_s": len(gen.tokens) / seconds, "speedup": len(gen.tokens) / seconds / ar_tps,
                         "mean_draft_size": sum(s.draft_size for s in gen.steps) / len(gen.steps),
                         "identical_to_ar": gen.tokens == ar.tokens}
        log(f"{shape}: {name} MAT {methods[name]['mat']:.2f}, drafting share "
            f"{100 * methods[name]['drafting_share']:.1f}%")
    result["methods"] = methods
    result["batch_sweep"] = batch_sweep(engine, prompt, ar.tokens, drafters, args.batch_sizes, args.new_tokens)
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    del model, draft, head, engine, drafters
    free(device)
    return result


# --- (d) engine modes: eager against static (fixed shapes, CUDA graphs) ------------------------------------------

MODEL_FREE = ("pld", "samd", "recycling", "lookahead", "pia", "suffix")


def copy_bandwidth(device, gib: float = 2.0) -> float:
    """Bytes a second a device-to-device copy moves (read + write), the best of 5: what a decode step can stream."""
    n = int(gib * 2 ** 30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * n * 2 / best


def hf_static_generate(model, prompt, n, rows, device) -> tuple[list[int], float]:
    """transformers' own static-cache generate, compiled as it compiles it on CUDA; timed after a warm-up that
    compiles and captures."""
    hf_generate(model, prompt, n, device, rows, cache_implementation="static")
    return hf_generate(model, prompt, n, device, rows, cache_implementation="static")


def compare_modes(shape: str, args, device, modes: list[str]) -> dict:
    """AR tokens/s per engine mode at B = 1 and 8 against transformers' compiled static generate and the bandwidth
    bound; t(n)/t(1) per mode (written where --profile-dir says); each model-free method's drafting share and its
    identity with AR per mode; the static arena at the paper's Best-of-16 scale."""
    family, config, _ = SHAPES[shape]
    if args.tiny:
        family, config = small_config(shape)
    model = make_model(family, config, torch.bfloat16, device, args.seed)
    vocab = vocab_of(model)
    prompt = torch.randint(2, vocab - 1, (args.prompt_len,), generator=torch.Generator().manual_seed(args.seed + 3)).tolist()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth(device, 0.25 if args.tiny else 2.0)
    result = {"family": family, "weight_bytes": weight_bytes, "copy_bandwidth_gb_s": bandwidth / 1e9, "modes": {},
              "prompt_len": len(prompt), "new_tokens": args.new_tokens}
    n = args.new_tokens
    for mode in modes:
        engine = SpeculativeEngine(model, mode=mode, kv_bucket=args.kv_bucket)
        row = result["modes"][mode] = {"ar": {}}
        warm = time.perf_counter()
        for rows in (1, 8):   # warm-up: every decode shape of AR at both batch sizes (captured once in static mode)
            engine.generate_batch([prompt] * rows, [Drafter() for _ in range(rows)], 24, SamplingConfig())
        row["warmup_seconds"] = time.perf_counter() - warm
        for rows in (1, 8):
            sync(device)
            start = time.perf_counter()
            gens = engine.generate_batch([prompt] * rows, [Drafter() for _ in range(rows)], n, SamplingConfig())
            sync(device)
            seconds = time.perf_counter() - start
            tokens = sum(len(g.tokens) for g in gens)
            kv_bytes = (engine.arena.bytes_per_token() if mode == "static" else 0) or kv_bytes_per_token(model)
            # a step reads every weight once and each row's cache (half the run's new tokens on average)
            step_bytes = weight_bytes + rows * kv_bytes * (len(prompt) + n / 2)
            row["ar"][rows] = {"tokens_per_s": tokens / seconds, "bound_tokens_per_s": rows * bandwidth / step_bytes,
                               "tokens": gens[0].tokens}
        ar_tokens = row["ar"][1]["tokens"]
        profile = ForwardCostProfile.measure(engine, args.max_width, args.contexts, repeats=args.repeats)
        row["profile"] = profile.to_dict()
        if args.profile_dir:
            os.makedirs(args.profile_dir, exist_ok=True)
            path = os.path.join(args.profile_dir, f"{shape}-{mode}.json")
            with open(path, "w") as f:
                json.dump({shape: row["profile"]}, f, indent=1)
            row["profile_file"] = path
        drafters = build_methods(model, chunks(ar_tokens), None, None, small=False, only=MODEL_FREE)
        row["methods"] = {}
        for name, drafter in drafters.items():
            engine.generate(prompt, drafter, 16, SamplingConfig())
            drafter.reset()
            gen = engine.generate(prompt, drafter, n, SamplingConfig())
            draft_s = sum(s.draft_seconds for s in gen.steps)
            verify_s = sum(s.verify_seconds for s in gen.steps)
            row["methods"][name] = {"mat": len(gen.tokens) / len(gen.steps), "drafting_share": draft_s / (draft_s + verify_s),
                                    "identical_to_ar": gen.tokens == ar_tokens,
                                    "tokens_per_s": len(gen.tokens) / (draft_s + verify_s)}
        row["engine"] = engine.describe()
        log(f"{shape} {mode}: AR {row['ar'][1]['tokens_per_s']:.1f} tok/s at B = 1 "
            f"({100 * row['ar'][1]['tokens_per_s'] / row['ar'][1]['bound_tokens_per_s']:.0f}% of the bound), "
            f"{row['ar'][8]['tokens_per_s']:.1f} at B = 8")
        del engine
        free(device)
    if not args.skip_hf_static:
        hf = result["hf_static"] = {}
        for rows in (1, 8):
            tokens, seconds = hf_static_generate(model, prompt, n, rows, device)
            hf[rows] = {"tokens_per_s": rows * len(tokens) / seconds,
                        "agrees_with_ar_for": first_divergence(tokens, result["modes"][modes[0]]["ar"][1]["tokens"])}
    for mode in modes:
        for rows in (1, 8):
            result["modes"][mode]["ar"][rows].pop("tokens")
    result["memory"] = arena_at_scale(model, device, args)
    del model
    free(device)
    return result


def kv_bytes_per_token(model) -> int:
    """K and V of every layer for one token: 2 x layers x key/value heads x head dim x element size."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * next(model.parameters()).element_size()


def arena_at_scale(model, device, args, rows: int = 16, new_tokens: int = 15000, prompt: int = 1024) -> dict:
    """Best-of-16 at B = 16 with 15,000 new tokens: the static arena's bytes for every batch size up to `rows`, and,
    with --memory-check, that arena allocated and one decode step of B = 16 run at its last position."""
    per_token = kv_bytes_per_token(model)
    widest = 129
    per_row = per_token * (prompt + new_tokens + widest)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"kv_bytes_per_token": per_token, "row_bytes": per_row,
           "arena_gib": {b: b * per_row / 2 ** 30 for b in (1, 2, 4, 8, 16)}, "weights_gib": weights / 2 ** 30}
    if args.memory_check and device.type == "cuda":
        free(device)
        torch.cuda.reset_peak_memory_stats(device)
        engine = SpeculativeEngine(model, mode="static", kv_bucket=args.kv_bucket)
        cache = engine.new_cache(prompt + new_tokens + widest, rows, in_arena=True)
        engine._append(cache, [[5] * prompt] * rows)       # the prompts, in chunks
        cache.set_lengths([prompt + new_tokens - 1] * rows)  # the last step of the longest run
        block = torch.ones(1, 1, dtype=torch.bool)
        engine._forward(cache, [[7]] * rows, [block] * rows, [[0]] * rows)
        sync(device)
        out["measured_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        out["device_gib"] = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        del engine, cache
        free(device)
    return out


def print_modes(shape: str, m: dict) -> None:
    print(f"\n## Engine modes, {shape}{' (tiny stand-in)' if args_tiny(m) else ''}: AR tokens/s and the bandwidth "
          f"bound ({m['copy_bandwidth_gb_s']:.0f} GB/s copy, {m['weight_bytes'] / 1e9:.1f} GB of weights)\n")
    rows = []
    for mode, r in m["modes"].items():
        for b, ar in r["ar"].items():
            rows.append([mode, str(b), f"{ar['tokens_per_s']:.1f}", f"{ar['bound_tokens_per_s']:.1f}",
                         f"{100 * ar['tokens_per_s'] / ar['bound_tokens_per_s']:.0f}%"])
    for b, hf in m.get("hf_static", {}).items():
        rows.append(["transformers static+compile", str(b), f"{hf['tokens_per_s']:.1f}", "", ""])
    print(table(["engine", "B", "tok/s", "bound tok/s", "of bound"], rows))
    widths = [1, 2, 4, 8, 16]
    print("\nt(n)/t(1) at the longest profiled context:\n")
    print(table(["mode"] + [str(w) for w in widths],
                [[mode] + [f"{ForwardCostProfile.from_dict(r['profile']).ratio(w, 1 << 30):.2f}" for w in widths]
                 for mode, r in m["modes"].items()]))
    print("\nModel-free methods (greedy, B = 1): MAT, drafting share, identical to AR\n")
    names = list(next(iter(m["modes"].values()))["methods"])
    print(table(["method"] + [f"{mode} {c}" for mode in m["modes"] for c in ("MAT", "drafting", "= AR")],
                [[name] + [v for mode, r in m["modes"].items() for v in
                           (f"{r['methods'][name]['mat']:.2f}", f"{100 * r['methods'][name]['drafting_share']:.1f}%",
                            "yes" if r["methods"][name]["identical_to_ar"] else "NO")] for name in names]))
    mem = m["memory"]
    print(f"\nStatic arena, Best-of-16 x 15,000 new tokens: {mem['kv_bytes_per_token'] / 1024:.0f} KiB a token, "
          + ", ".join(f"B = {b}: {g:.1f} GiB" for b, g in mem["arena_gib"].items())
          + f" (+ {mem['weights_gib']:.1f} GiB of weights)"
          + (f"; measured peak {mem['measured_peak_gib']:.1f} of {mem['device_gib']:.0f} GiB"
             if "measured_peak_gib" in mem else ""))


def args_tiny(m: dict) -> bool:
    return m["weight_bytes"] < 1e9


def real_tokenizer(shape: str, vocab: int):
    """The shape's real tokenizer when it is built and fits the model's vocabulary, else None (random prompts)."""
    from model.vocab.locate import has_tokenizer, load_family
    name = SHAPE_TOKENIZERS.get(shape)
    if name is None or not has_tokenizer(name):
        log(f"{shape}: no real tokenizer built (make tokenizers): random prompts")
        return None
    tokenizer = load_family(name)
    if len(tokenizer) > vocab:
        raise SystemExit(f"{shape}: the {name} tokenizer has {len(tokenizer)} tokens, the model {vocab}")
    return tokenizer


def real_prompt(tokenizer, length: int) -> list[int]:
    from model.vocab.real_prompts import real_prompt as build
    return build(tokenizer, length)


def check_budget(engine, prompt: list[int], tokenizer, new_tokens: int = 120) -> dict:
    """The thinking budget with the real phrase: past 80% of the tokens the phrase is forced, `</think>` (one token
    of the real vocabulary) inside it (the last 20% of `new_tokens` hold the whole phrase)."""
    from evaluation.run import paradigms
    budget = paradigms.thinking_budget(tokenizer, new_tokens)
    gen = engine.generate(prompt, Drafter(), new_tokens, SamplingConfig(), budget=budget)
    at = budget.trigger_at
    forced = gen.tokens[at:at + len(budget.phrase)] == budget.phrase
    ok = forced and budget.end_token in gen.tokens and tokenizer.decode(budget.phrase) == paradigms.BUDGET_PHRASE
    log(f"thinking budget with the real phrase ({len(budget.phrase)} tokens, </think> = {budget.end_token}): "
        f"{'forced at token ' + str(at) if ok else 'NOT as expected'}")
    return {"trigger_at": at, "phrase_tokens": len(budget.phrase), "end_token": budget.end_token, "forced": ok}


def batch_sweep(engine, prompt, reference, drafters: dict, sizes: list[int], new_tokens: int) -> dict:
    """Best-of-N-like batches of the same prompt: AR's throughput at each B (its batching gain) and each method's
    throughput over AR's at the same B, with its drafter forked per row (cross-sample drafting on at question scope);
    and how many rows equal AR's batch-1 output (bfloat16: a near-tie may flip between batch shapes).

    AR runs first and again last at each B and its throughput is their mean: on the H200 the first timed run at B = 8
    once came out at half the rate of every later one, so a single AR run can make every method look twice as fast.
    `ar_spread` (|first - last| / mean) says how far to trust that B's speedups."""
    out = {}
    for size in sizes:
        entry, ar_runs = {}, []
        for name, drafter in [("ar", Drafter()), *drafters.items(), ("ar", Drafter())]:
            rows = [drafter] + [drafter.fork(share_memory=drafter.default_scope == "global") for _ in range(size - 1)]
            for row in rows:
                row.reset()
                row.share_with([other for other in rows if other is not row] if drafter.default_scope == "question"
                               else [])
            engine.generate_batch([prompt] * size, rows, 16, SamplingConfig())   # warm-up: this B's kernels
            for row in rows:
                row.reset()
            start = engine.clock()
            gens = engine.generate_batch([prompt] * size, rows, new_tokens, SamplingConfig())
            seconds = engine.clock() - start
            tokens = sum(len(g.tokens) for g in gens)
            steps = sum(len(g.steps) for g in gens)
            entry[name] = {"tokens_per_s": tokens / seconds, "mat": tokens / steps,
                           "rows_identical_to_ar": sum(g.tokens == reference for g in gens), "rows": size}
            if name == "ar":
                ar_runs.append(tokens / seconds)
            log(f"batch {size}: {name} {tokens / seconds:.1f} tok/s, MAT {entry[name]['mat']:.2f}")
        mean = sum(ar_runs) / len(ar_runs)
        entry["ar"].update(tokens_per_s=mean, runs_tokens_per_s=ar_runs, ar_spread=abs(ar_runs[0] - ar_runs[1]) / mean)
        for name, row in entry.items():
            row["speedup"] = row["tokens_per_s"] / mean
        out[size] = entry
    first = out[sizes[0]]["ar"]["tokens_per_s"]
    for size in sizes:
        out[size]["ar"]["batching_gain"] = out[size]["ar"]["tokens_per_s"] / first
    return out


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- report ---------------------------------------------------------------------------------------------------

def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def divergence_note(row: dict) -> str:
    return "; ".join(f"{d['prompt']} prompt at token {d['position']}, AR logit margin "
                     f"{'-' if d['ar_logit_margin'] is None else format(d['ar_logit_margin'], '.2e')}"
                     for d in row["divergences"])


def print_correctness(checks: dict, dtype: str, new_tokens: int) -> None:
    families = list(checks)
    print(f"\n## (a) Greedy identity with AR (small random models, {dtype}, 2 prompts x {new_tokens} tokens; "
          f"MAT counts the bonus token, AR = 1.00)\n")
    header = ["Method"] + [f"identical ({checks[s]['family']})" for s in families] + \
             [f"MAT ({checks[s]['family']})" for s in families] + \
             [f"steps with a draft accepted ({checks[s]['family']})" for s in families]
    rows = []
    for method in METHODS:
        cells = [method]
        for s in families:
            r = checks[s]["rows"][method]
            cells.append("yes" if r["identical"] else f"NO ({divergence_note(r)})")
        cells += [f"{checks[s]['rows'][method]['mat']:.2f}" for s in families]
        cells += [f"{checks[s]['rows'][method]['steps_with_accepted_draft']}/{checks[s]['rows'][method]['steps']}"
                  for s in families]
        rows.append(cells)
    cells = ["(AR vs transformers generate)"]
    for s in families:
        r = checks[s]["transformers"]
        cells.append("yes" if r["identical"] else f"NO{' (near-tie)' if r['near_tie_only'] else ''} "
                     f"({divergence_note(r)})")
    rows.append(cells + ["1.00"] * len(families) + ["-"] * len(families))
    print(table(header, rows))


def print_measurement(shape: str, m: dict, device_name: str) -> None:
    c = m["config"]
    ratio = m["embedding_ratio"]
    embeddings = "as initialised" if ratio is None else f"raised to {ratio:g}x the layers' sum"
    print(f"\n## (b) {shape}{' (tiny stand-in)' if m.get('tiny') else ''}: bfloat16 on {device_name}; hidden "
          f"{c['hidden_size']}, {c['num_hidden_layers']} layers, vocab {c['vocab_size']}, embeddings {embeddings}; "
          f"{'real-text prompt (' + m['tokenizer'] + ' tokenizer)' if m.get('tokenizer') else 'random prompt'} of "
          f"{m['prompt_len']} tokens, {m['new_tokens']} new tokens, greedy\n")
    ar, hf = m["ar"], m["hf"]
    print(table(["Decoder", "tok/s", "vs transformers", "output"],
                [["ours, AR (base Drafter)", f"{ar['tokens_per_s']:.2f}",
                  f"{ar['tokens_per_s'] / hf['tokens_per_s']:.2f}x",
                  f"{ar['output']['distinct']} distinct tokens, longest run {ar['output']['longest_run']}"
                  + (" (DEGENERATE)" if ar["output"]["degenerate"] else "")],
                 ["transformers generate", f"{hf['tokens_per_s']:.2f}", "1.00x",
                  f"same as ours for the first {hf['agrees_with_ar_for']}/{ar['tokens']} tokens"]]))
    p = m["profile"]
    print(f"\nForward cost of n new tokens on a cache of L tokens (median of {p['repeats']}): t(n) in ms, "
          f"t(n)/t(1)\n")
    header = ["n"] + [f"t(n) ms, L={L}" for L in p["context_lengths"]] + \
             [f"t(n)/t(1), L={L}" for L in p["context_lengths"]]
    rows = [[str(w)] + [f"{1000 * row[j]:.2f}" for row in p["seconds"]] + [f"{row[j]:.2f}" for row in p["ratio"]]
            for j, w in enumerate(p["widths"])]
    print(table(header, rows))
    print("\nMethods (MAT counts the bonus token, AR = 1.00; drafting share = draft s / (draft + verify s); random "
          "weights, so MAT and speedup say little, costs and shares are what count)\n")
    rows = [[name, f"{r['mat']:.2f}", f"{r['mean_draft_size']:.1f}", f"{100 * r['drafting_share']:.1f}%",
             f"{1000 * r['draft_seconds'] / r['steps']:.2f}", f"{1000 * r['verify_seconds'] / r['steps']:.2f}",
             f"{r['tokens_per_s']:.2f}", f"{r['speedup']:.2f}x", "yes" if r["identical_to_ar"] else "no"]
            for name, r in m["methods"].items()]
    print(table(["Method", "MAT", "nodes/step", "drafting share", "draft ms/step", "verify ms/step", "tok/s",
                 "vs our AR", "= AR (bf16)"], rows))
    sweep = m.get("batch_sweep")
    if sweep:
        sizes = list(sweep)
        names = list(sweep[sizes[0]])
        print(f"\nBatch sweep: {', '.join(map(str, sizes))} rows of the same prompt, greedy; AR: batch throughput "
              f"(tok/s of all rows, the mean of a run before and a run after the methods; spread = their difference "
              f"over the mean) and its gain over B = {sizes[0]}; methods: throughput over AR's at the same B "
              f"(rows equal to AR's batch-1 output)\n")
        rows = []
        for size in sizes:
            ar = sweep[size]["ar"]
            rows.append([str(size), f"{ar['tokens_per_s']:.1f}", f"{100 * ar['ar_spread']:.0f}%",
                         f"{ar['batching_gain']:.2f}x"] +
                        [f"{sweep[size][n]['speedup']:.2f}x ({sweep[size][n]['rows_identical_to_ar']}/{size})"
                         for n in names if n != "ar"])
        print(table(["B", "AR tok/s", "AR spread", "AR gain"] + [n for n in names if n != "ar"], rows))
    if "peak_gpu_memory_gib" in m:
        print(f"\npeak GPU memory {m['peak_gpu_memory_gib']:.1f} GiB")


def environment(device) -> dict:
    import transformers
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="measure tiny stand-ins of the same families")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--check-dtype", choices=["float32", "float64"], default="float32",
                        help="dtype of the small correctness models (a)")
    parser.add_argument("--check-tokens", type=int, default=64, help="new tokens per prompt in (a) and per round in (c)")
    parser.add_argument("--half-dtypes", nargs="*", choices=["float16", "bfloat16"], default=["float16", "bfloat16"],
                        help="dtypes of the half-precision divergence check (c); none: skip it")
    parser.add_argument("--prompt-len", type=int, default=128, help="random prompt length in (b)")
    parser.add_argument("--new-tokens", type=int, default=256, help="new tokens per generation in (b)")
    parser.add_argument("--max-width", type=int, default=128, help="widest forward profiled in (b)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 4096], help="profiled context lengths")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per profiled forward")
    parser.add_argument("--num-layers", type=int, default=None,
                        help="override the real shapes' layer count (a quicker smoke run on a small GPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64],
                        help="rows per batch in (b)'s batch sweep")
    parser.add_argument("--skip-measure", action="store_true", help="run (a) only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-mode", choices=["eager", "static", "both"], default="eager",
                        help="the engine mode(s) of (a); static or both also runs (d): eager against static")
    parser.add_argument("--kv-bucket", type=int, default=256, help="static mode's key-length bucket (0: all)")
    parser.add_argument("--profile-dir", default=None,
                        help="(d): write each mode's t(n)/t(1) profile here (<shape>-<mode>.json, for replay's "
                             "--cost-profile FILE:<shape>)")
    parser.add_argument("--skip-hf-static", action="store_true", help="(d): skip transformers' compiled generate")
    parser.add_argument("--memory-check", action="store_true",
                        help="(d): allocate the Best-of-16 x 15,000-token static arena and run a step at its end")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda was asked for but no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    env = environment(device)
    device_name = env.get("gpu", "cpu")
    log(f"device {device_name}, torch {env['torch']}, transformers {env['transformers']}")
    report = {"environment": env, "arguments": vars(args), "correctness": {}, "measurements": {}}

    modes = ["eager", "static"] if args.engine_mode == "both" else [args.engine_mode]
    for shape in args.shapes:
        for mode in modes:
            log(f"(a) correctness on a small {SHAPES[shape][0]} model, {args.check_dtype}, {mode} mode")
            key = shape if mode == "eager" else f"{shape}/{mode}"
            report["correctness"][key] = check_correctness(shape, device, DTYPES[args.check_dtype],
                                                           args.check_tokens, args.seed, mode)
    print(f"# GPU check on {device_name} (torch {env['torch']}, transformers {env['transformers']})")
    print_correctness(report["correctness"], args.check_dtype, args.check_tokens)
    sys.stdout.flush()

    report["half_precision"] = {}
    for shape in args.shapes:
        for dtype_name in args.half_dtypes:
            log(f"(c) half precision on a small {SHAPES[shape][0]} model, {dtype_name}")
            report["half_precision"][f"{shape}/{dtype_name}"] = check_half_precision(
                shape, device, dtype_name, args.check_tokens, args.seed, args.tiny)
    if report["half_precision"]:
        print_half_precision(report["half_precision"], args.check_tokens)
        sys.stdout.flush()

    if not args.skip_measure:
        for shape in args.shapes:
            log(f"(b) measuring {shape}{' (tiny stand-in)' if args.tiny else ''}")
            m = measure_shape(shape, args, device)
            m["tiny"] = args.tiny
            report["measurements"][shape] = m
            print_measurement(shape, m, device_name)
            sys.stdout.flush()

    if args.engine_mode != "eager":
        report["engine_modes"] = {}
        for shape in args.shapes:
            log(f"(d) engine modes on {shape}{' (tiny stand-in)' if args.tiny else ''}: {', '.join(modes)}")
            m = report["engine_modes"][shape] = compare_modes(shape, args, device, modes)
            print_modes(shape, m)
            sys.stdout.flush()

    failed = [f"{shape}/{method}" for shape, c in report["correctness"].items()
              for method, r in c["rows"].items() if not r["identical"]]
    failed += [f"{shape}/transformers-generate" for shape, c in report["correctness"].items()
               if not c["transformers"]["identical"] and not c["transformers"]["near_tie_only"]]
    report["not_identical"] = failed
    unexplained = [f"{key}/{method}" for key, c in report["half_precision"].items()
                   for method, r in c["rows"].items() if r["counts"]["unexplained"] or r["counts"]["unclassified"]]
    report["half_precision_unexplained"] = unexplained
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    if unexplained:
        print(f"\nUnexplained half-precision divergences: {', '.join(unexplained)}")
    if failed:
        print(f"\nNOT identical to AR: {', '.join(failed)}")
        log(f"FAILED: {len(failed)} method/model pairs differ from AR")
    if failed or unexplained:
        return 1
    print("\nEvery method is token-identical to AR.")
    if report["half_precision"]:
        print("In half precision every divergence from AR is at a near-tie or inherited.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
