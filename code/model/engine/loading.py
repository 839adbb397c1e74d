"""Load any Hugging Face decoder-only model for the engine, with clear errors for what cannot work."""
from __future__ import annotations

import os

import torch

from ..errors import UserError
from ..locations import check_location
from .allocator import keep_freed_memory
from .attention import use_grouped_sdpa

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def check_causal_config(config, path: str) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"{path} is an encoder-decoder model ({config.model_type}); the engine needs a decoder-only causal LM")
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise UserError(f"{path} is not a causal language model (architectures: {', '.join(archs)})")
    layer_types = getattr(config, "layer_types", None) or []
    if any("sliding" in str(t) for t in layer_types) or (
            getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
            and not layer_types):
        raise UserError(f"{path} uses sliding-window attention, which the tree-attention engine does not support yet")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any loading failure is the user's path
        raise UserError(f"cannot load a tokenizer from {path}: {first_line(exc)}") from None


def spread_over(num_gpus: int, torch_device: torch.device) -> dict:
    """from_pretrained's placement for one model on exactly `num_gpus` GPUs: the first ones this process sees (a Ray
    replica sees only its own). device_map "auto" alone would take every visible GPU, so max_memory names the M
    devices, each with 90% of its free memory (what transformers leaves when it picks the budget itself)."""
    flag = f"--num-gpus-per-model {num_gpus}"
    if torch_device.type != "cuda":
        raise UserError(f"{flag} spreads the model over {num_gpus} GPUs, but this run's device is {torch_device.type}")
    visible = torch.cuda.device_count()
    if num_gpus > visible:
        where = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise UserError(f"{flag} asks for {num_gpus} GPUs, but this process sees {visible}"
                        + (f" (CUDA_VISIBLE_DEVICES={where})" if where is not None else ""))
    return {"device_map": "auto",
            "max_memory": {i: int(torch.cuda.mem_get_info(i)[0] * 0.9) for i in range(num_gpus)}}


def load_model(path: str, dtype: str = "float16", device: str = "auto", num_gpus: int = 1,
               flag: str = "--model-path"):
    """Returns (model, tokenizer, torch.device). `path` is a local directory or a hub id; `flag` names it in errors."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one that matters
    check_location(path, flag)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file; give the model's directory")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        raise UserError(f"{flag} {path} is not a model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot load a model config from {flag} {path}: {first_line(exc)}") from None
    check_causal_config(config, f"{flag} {path}")
    torch_device = resolve_device(device)
    kwargs = {"dtype": DTYPES[dtype], "attn_implementation": "sdpa"}
    if num_gpus > 1:
        kwargs.update(spread_over(num_gpus, torch_device))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as exc:
        if "sdpa" not in str(exc).lower():
            raise UserError(f"{flag} {path} is not a causal language model: {first_line(exc)}") from None
        kwargs["attn_implementation"] = "eager"  # architectures without SDPA: the engine passes an additive mask
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot load model weights from {flag} {path}: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot load model weights from {flag} {path}: {first_line(exc)}") from None
    use_grouped_sdpa(model)   # grouped-query attention under the engine's masks without repeated keys and values
    if torch_device.type == "cpu":
        keep_freed_memory()   # decoding's per-step temporaries stay in the heap (see allocator.py)
    if "device_map" not in kwargs:
        model.to(torch_device)
    elif {"cpu", "disk"} & set(getattr(model, "hf_device_map", {}).values()):
        raise UserError(f"{flag} {path} does not fit in the free memory of --num-gpus-per-model {num_gpus} GPUs "
                        "(accelerate offloaded part of it to the CPU or disk)")
    model.eval()
    return model, load_tokenizer(path), torch_device


def load_draft_model(path: str, target, target_tokenizer, target_path: str, dtype: str | None = None,
                     flag: str = "--drafter-path"):
    """A draft model for `target`: on the device of the target's input embedding (its first layer, when the
    target spans several GPUs), in the target's dtype unless `dtype` says otherwise, sharing its token ids."""
    dtype = dtype or next(name for name, value in DTYPES.items() if value == target.dtype)
    device = str(target.get_input_embeddings().weight.device)
    draft, tokenizer, _ = load_model(path, dtype, device, flag=flag)
    check_same_tokenizer(tokenizer, target_tokenizer, f"{flag} {path}", target_path)
    rows = draft.get_input_embeddings().weight.shape[0]
    if rows < len(target_tokenizer):
        raise UserError(f"{flag} {path} embeds {rows} token ids, fewer than the tokenizer's {len(target_tokenizer)}")
    return draft


def check_same_tokenizer(draft_tokenizer, target_tokenizer, draft_name: str, target_name: str) -> None:
    """Draft and target must map text to the same ids; padded embedding rows beyond the vocabulary do not matter."""
    draft_vocab, target_vocab = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if draft_vocab == target_vocab:
        return
    token = min(set(draft_vocab.items()) ^ set(target_vocab.items()), key=lambda item: item[1])[0]
    raise UserError(f"the draft's tokenizer ({draft_name}, {len(draft_vocab)} tokens) differs from the target's "
                    f"({target_name}, {len(target_vocab)} tokens): {token!r} is id {draft_vocab.get(token)} in the "
                    f"draft's, {target_vocab.get(token)} in the target's")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
