"""Read and write EAGLE-3 heads in the layouts people publish (EAGLE, SpecForge, AngelSlim, vLLM speculators).

A head directory holds config.json (a one-layer Llama config with `draft_vocab_size`; optional
`target_hidden_size`, `head_dim`, `eagle_config.eagle_aux_hidden_state_layer_ids`) and model.safetensors or
pytorch_model.bin with `fc`, `midlayer.*` (or `layers.0.*`), `norm`, `lm_head`, and the `d2t` / `t2d` buffers
(absent when the draft vocabulary is the target's). `embed_tokens` is usually absent: the target's is used.
Everything that does not fit the target is a one-line error before any generation.
"""
from __future__ import annotations

import json
import os

import torch

from ..engine.hidden import decoder_layers
from ..engine.loading import check_location, first_line
from ..errors import UserError
from .head import Eagle3Head

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ARCHITECTURE = "LlamaForCausalLMEagle3"


def default_layers(num_layers: int) -> tuple[int, ...]:
    """EAGLE-3's low/mid/high features: the inputs of target layers 2, L//2 and L-3 (`hidden_states` indices)."""
    return (2, num_layers // 2, num_layers - 3)


def head_directory(path: str, flag: str) -> str:
    """A local directory, or a hub id downloaded (config and weights only) into the hub cache."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise UserError(f"{flag} {path} is a file; give the head's directory")
    check_location(path, flag)
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(path, allow_patterns=["config.json", *WEIGHT_FILES])
    except Exception as exc:  # noqa: BLE001 - a missing directory or an unreachable hub id
        raise UserError(f"{flag} {path} is neither a directory nor a reachable hub id ({first_line(exc)})") from None


def read_state(directory: str, flag: str) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        file = os.path.join(directory, name)
        if not os.path.exists(file):
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file
                state = load_file(file)
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot read {file}: {first_line(exc)}") from None
        # Exports differ in prefixes: "model." wrappers, and "layers.0." for the one decoder layer.
        renamed = {}
        for key, value in state.items():
            key = key.removeprefix("model.")
            renamed["midlayer." + key[len("layers.0."):] if key.startswith("layers.0.") else key] = value
        return renamed
    raise UserError(f"{flag} {directory} has no {' or '.join(WEIGHT_FILES)}")


def load_head(path: str, target, flag: str = "--ea-model-path"):
    """(head, input embedding, target layers) for `target`, on its device and in its dtype."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    directory = head_directory(path, flag)
    config_file = os.path.join(directory, "config.json")
    if not os.path.exists(config_file):
        raise UserError(f"{flag} {path} is not an EAGLE-3 head directory (no config.json)")
    try:
        with open(config_file) as f:
            raw = json.load(f)
        config = LlamaConfig.from_dict(raw)   # reads legacy rope_theta / rope_scaling into rope_parameters
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read {config_file}: {first_line(exc)}") from None
    config._name_or_path = path
    state = read_state(directory, flag)
    name = f"{flag} {path}"
    for key in ("fc.weight", "lm_head.weight", "midlayer.self_attn.q_proj.weight"):
        if key not in state:
            raise UserError(f"{name} is not an EAGLE-3 head: its weights have no {key}")

    target_hidden = target.config.hidden_size
    fc_in = state["fc.weight"].shape[1]
    if fc_in != 3 * target_hidden:
        raise UserError(f"{name} was trained on a target of hidden size {fc_in // 3}; this target's is {target_hidden}")
    target_vocab = target.get_input_embeddings().weight.shape[0]
    vocab = state["t2d"].numel() if "t2d" in state else raw.get("vocab_size", target_vocab)
    draft_vocab = state["lm_head.weight"].shape[0]
    if raw.get("draft_vocab_size", draft_vocab) != draft_vocab:
        raise UserError(f"{name}: config says draft_vocab_size {raw['draft_vocab_size']}, lm_head has {draft_vocab}")
    if "d2t" not in state:
        if draft_vocab != vocab:
            raise UserError(f"{name} drafts over {draft_vocab} of {vocab} tokens but has no d2t mapping")
        state["d2t"] = torch.zeros(draft_vocab, dtype=torch.long)
    top_id = int((torch.arange(draft_vocab) + state["d2t"]).max())
    if vocab > target_vocab or top_id >= target_vocab:
        raise UserError(f"{name} has a vocabulary of {vocab} tokens; the target embeds {target_vocab}")
    state.setdefault("t2d", torch.ones(vocab, dtype=torch.bool))
    # head_dim from the weights themselves: configs that omit it (or that loaders ignore) are a known pitfall.
    config.head_dim = state["midlayer.self_attn.q_proj.weight"].shape[0] // config.num_attention_heads

    num_layers = len(decoder_layers(target))
    ids = (raw.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    # SpecForge counts layer outputs: its id i is hidden_states[i + 1], the input of layer i + 1.
    layers = tuple(i + 1 for i in ids) if ids else default_layers(num_layers)
    if len(layers) != 3 or not all(0 <= i < num_layers for i in layers):
        raise UserError(f"{name} reads target layers {list(layers)}; the target has layers 0..{num_layers - 1}")

    embedding = target.get_input_embeddings()
    embed = state.pop("embed_tokens.weight", None)
    head = Eagle3Head(config, target_hidden, vocab, draft_vocab)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{name} does not fit an EAGLE-3 head of its config: {first_line(exc)}") from None
    device, dtype = embedding.weight.device, embedding.weight.dtype
    head.to(device=device, dtype=dtype).eval()   # buffers d2t / t2d keep their integer / bool types
    head.rotary = LlamaRotaryEmbedding(config).to(device)   # RoPE frequencies stay in float32 whatever the dtype
    if embed is not None:
        embedding = torch.nn.Embedding.from_pretrained(embed.to(device=device, dtype=dtype))
    return head, embedding, layers


def save_head(head: Eagle3Head, layers: tuple[int, ...], directory: str) -> None:
    """The official layout: config.json + model.safetensors (midlayer.*, fc, norm, lm_head, d2t, t2d)."""
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    c = head.config
    rope = dict(c.rope_parameters)
    config = {"architectures": [ARCHITECTURE], "model_type": "llama", "num_hidden_layers": 1,
              "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
              "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
              "head_dim": head.midlayer.self_attn.head_dim, "hidden_act": c.hidden_act, "rms_norm_eps": c.rms_norm_eps,
              "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": False,
              "vocab_size": head.t2d.numel(), "draft_vocab_size": head.draft_vocab_size,
              "target_hidden_size": head.fc.weight.shape[1] // 3,
              # Both spellings of RoPE: older readers (EAGLE, vLLM) look for rope_theta / rope_scaling.
              "rope_theta": rope.get("rope_theta"), "rope_parameters": rope,
              "rope_scaling": None if rope.get("rope_type", "default") == "default" else rope,
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in layers]}}
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    save_file(state, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
