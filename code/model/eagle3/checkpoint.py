"""Read and write EAGLE-3 heads in the layouts people publish, so a head travels both ways.

Read:
  * flat (EAGLE, SpecForge, AngelSlim): config.json is a one-layer Llama config with `draft_vocab_size`, optional
    `target_hidden_size`, `head_dim`, `eagle_config.eagle_aux_hidden_state_layer_ids` (SpecForge / SGLang count
    layer outputs: id i is the input of layer i + 1) and a top-level `eagle_aux_hidden_state_layer_ids` (vLLM:
    id i is the input of layer i); SpecForge's `norm_output: false` (no final norm before lm_head), `fc_norm`,
    vLLM's `norm_before_residual`. Weights `midlayer.*` or `layers.0.*`, `fc`, `norm`, `lm_head`, `d2t` / `t2d`.
  * speculators (vLLM): `speculators_model_type: eagle3`, the layer's config nested under
    `transformer_layer_config`, top-level `eagle_aux_hidden_state_layer_ids` (inputs of those layers),
    `norm_before_residual`, `norm_before_fc`, `fc_norm`, `norm_output` (EAGLE 3.1: the next step gets the normed
    hidden), `target_hidden_size`; weights `layers.0.*`, optional `input_norm`, `fc_norm.i`.
  `embed_tokens` is usually absent: the target's is used. Anything that does not fit the target, or a variant this
  head does not implement, is a one-line error before any generation.
Write (`save_head`, `--format`): `eagle` (flat; what EAGLE's own code, SpecForge, SGLang and vLLM read) or
`speculators`. Convert a head: `python -m model.eagle3.train --convert IN --target T --output OUT --format F`.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import torch

from ..engine.hidden import decoder_layers
from ..engine.loading import first_line
from ..locations import check_location
from ..errors import UserError
from .head import Eagle3Head, option

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ARCHITECTURE = "LlamaForCausalLMEagle3"
SPECULATORS_ARCHITECTURE = "Eagle3DraftModel"
FORMATS = ("eagle", "speculators")
# Head variants (head.py) and the field each one is spelled with in the speculators layout.
SPECULATORS_SWITCHES = {"norm_before_residual": "norm_before_residual", "norm_before_fc": "norm_before_fc",
                        "fc_norm": "fc_norm", "feed_normed_hidden": "norm_output"}


@dataclass(frozen=True)
class TargetShape:
    """What a head must fit: the target's hidden size, vocabulary (embedding rows) and number of layers."""
    hidden_size: int
    vocab_size: int
    num_layers: int


def target_shape(target) -> TargetShape:
    return TargetShape(target.config.hidden_size, target.get_input_embeddings().weight.shape[0],
                       len(decoder_layers(target)))


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


# --- Reading a config: which layout, which variant, which target layers ---------------------------------------------

@dataclass
class HeadSpec:
    """What a config.json says, in this head's terms: the Llama layer config, the variants, and the target layers
    (`hidden_states` indices: inputs of those layers) or None for the default ones."""
    layer_config: dict
    switches: dict
    layers: tuple[int, ...] | None


def read_spec(raw: dict, name: str) -> HeadSpec:
    if "speculators_model_type" in raw or "transformer_layer_config" in raw:
        return speculators_spec(raw, name)
    return flat_spec(raw, name)


def speculators_spec(raw: dict, name: str) -> HeadSpec:
    """vLLM's speculators layout (its reader: the nested layer config, the algorithm's fields at the top)."""
    kind = raw.get("speculators_model_type")
    if kind != "eagle3":
        raise UserError(f"{name}: speculators_model_type {kind!r} is not an EAGLE-3 head (eagle3)")
    layer = raw.get("transformer_layer_config")
    if not isinstance(layer, dict):
        raise UserError(f"{name}: transformer_layer_config must be the draft layer's config (a JSON object)")
    if layer.get("num_hidden_layers", 1) != 1:
        raise UserError(f"{name}: transformer_layer_config.num_hidden_layers is {layer['num_hidden_layers']}; "
                        "only one-layer heads are supported")
    if layer.get("use_sliding_window") or "sliding_attention" in (layer.get("layer_types") or []):
        raise UserError(f"{name}: transformer_layer_config asks for sliding-window attention, not supported here")
    # vLLM's reader takes a missing norm_before_residual as true; the speculators package always writes it.
    switches = {"norm_before_residual": bool(raw.get("norm_before_residual", True)),
                "norm_before_fc": bool(raw.get("norm_before_fc", False)), "fc_norm": bool(raw.get("fc_norm", False)),
                "feed_normed_hidden": bool(raw.get("norm_output", False))}
    if switches["norm_before_fc"] and switches["fc_norm"]:
        raise UserError(f"{name}: norm_before_fc and fc_norm are exclusive, the config sets both")
    ids = raw.get("eagle_aux_hidden_state_layer_ids")
    config = {**layer, "draft_vocab_size": raw.get("draft_vocab_size", layer.get("vocab_size"))}
    return HeadSpec(config, switches, tuple(ids) if ids else None)


def flat_spec(raw: dict, name: str) -> HeadSpec:
    """EAGLE's / SpecForge's flat layout; vLLM reads the same file with its own top-level fields."""
    eagle_config = raw.get("eagle_config") or {}
    if eagle_config.get("use_aux_hidden_state") is False:
        raise UserError(f"{name}: eagle_config.use_aux_hidden_state is false (an EAGLE-1 style head), not EAGLE-3")
    switches = {"norm_before_residual": bool(raw.get("norm_before_residual", False)),
                "norm_before_fc": bool(raw.get("norm_before_fc", eagle_config.get("norm_before_fc", False))),
                "fc_norm": bool(raw.get("fc_norm", False)),
                # SpecForge's norm_output: whether lm_head reads norm(h) (its default) or h itself.
                "norm_before_lm_head": bool(raw.get("norm_output", True))}
    nested = eagle_config.get("eagle_aux_hidden_state_layer_ids")
    top = raw.get("eagle_aux_hidden_state_layer_ids")
    from_nested = tuple(i + 1 for i in nested) if nested else None   # SpecForge counts layer outputs
    from_top = tuple(top) if top else None                             # vLLM counts layer inputs
    if from_nested and from_top and from_nested != from_top:
        raise UserError(f"{name}: eagle_config.eagle_aux_hidden_state_layer_ids {list(nested)} (layer outputs) and "
                        f"the top-level eagle_aux_hidden_state_layer_ids {list(top)} (layer inputs) disagree")
    return HeadSpec(raw, switches, from_nested or from_top)


# --- Loading ---------------------------------------------------------------------------------------------------------

def read_head(path: str, shape: TargetShape, flag: str = "--ea-model-path"):
    """(head on the CPU in its weights' dtype, its own embedding weight or None, target layers) for a target of
    `shape`."""
    from transformers import LlamaConfig
    directory = head_directory(path, flag)
    config_file = os.path.join(directory, "config.json")
    if not os.path.exists(config_file):
        raise UserError(f"{flag} {path} is not an EAGLE-3 head directory (no config.json)")
    name = f"{flag} {path}"
    try:
        with open(config_file) as f:
            raw = json.load(f)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read {config_file}: {first_line(exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{config_file} is not a JSON object")
    spec = read_spec(raw, name)
    try:
        config = LlamaConfig.from_dict(spec.layer_config)   # reads legacy rope_theta / rope_scaling too
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read {config_file}: {first_line(exc)}") from None
    config._name_or_path = path
    state = read_state(directory, flag)
    for key in ("fc.weight", "lm_head.weight", "midlayer.self_attn.q_proj.weight"):
        if key not in state:
            raise UserError(f"{name} is not an EAGLE-3 head: its weights have no {key}")
    if any(key.startswith("layers.") for key in state):
        raise UserError(f"{name} has more than one decoder layer; only one-layer heads are supported")

    layers = spec.layers or default_layers(shape.num_layers)
    if not all(0 <= i < shape.num_layers for i in layers):
        raise UserError(f"{name} reads target layers {list(layers)}; the target has layers 0..{shape.num_layers - 1}"
                        " (the output of the last layer is not captured here)")
    fc_in = state["fc.weight"].shape[1]
    if fc_in != len(layers) * shape.hidden_size:
        raise UserError(f"{name} was trained on a target of hidden size {fc_in // len(layers)}; "
                        f"this target's is {shape.hidden_size}")
    vocab = state["t2d"].numel() if "t2d" in state else spec.layer_config.get("vocab_size", shape.vocab_size)
    draft_vocab = state["lm_head.weight"].shape[0]
    declared = spec.layer_config.get("draft_vocab_size") or draft_vocab
    if declared != draft_vocab:
        raise UserError(f"{name}: config says draft_vocab_size {declared}, lm_head has {draft_vocab}")
    if "d2t" not in state:
        if draft_vocab != vocab:
            raise UserError(f"{name} drafts over {draft_vocab} of {vocab} tokens but has no d2t mapping")
        state["d2t"] = torch.zeros(draft_vocab, dtype=torch.long)
    top_id = int((torch.arange(draft_vocab) + state["d2t"]).max())
    if vocab > shape.vocab_size or top_id >= shape.vocab_size:
        raise UserError(f"{name} has a vocabulary of {vocab} tokens; the target embeds {shape.vocab_size}")
    state.setdefault("t2d", torch.ones(vocab, dtype=torch.bool))
    # head_dim from the weights themselves: configs that omit it (or that loaders ignore) are a known pitfall.
    config.head_dim = state["midlayer.self_attn.q_proj.weight"].shape[0] // config.num_attention_heads
    for key, value in spec.switches.items():
        setattr(config, key, value)
    config.qk_norm = "midlayer.self_attn.q_norm.weight" in state   # a Qwen3 decoder layer's per-head q/k norms

    embed = state.pop("embed_tokens.weight", None)
    # Built in the weights' own dtype, so loading does not round them (a float64 head stays exact).
    head = Eagle3Head(config, shape.hidden_size, vocab, draft_vocab, len(layers)).to(state["fc.weight"].dtype)
    load_weights(head, state, name)
    return head, embed, layers


def load_weights(head: Eagle3Head, state: dict, name: str) -> None:
    """The weights into the head, or one line naming what does not fit (a variant the config does not declare,
    a weight it lacks, a shape)."""
    shapes = {key: tuple(value.shape) for key, value in head.state_dict().items()}
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if unexpected:
        raise UserError(f"{name} has weights its config declares no use for: {', '.join(unexpected[:4])}"
                        " (an unsupported variant, or a config field missing)")
    if missing:
        raise UserError(f"{name} lacks weights its config needs: {', '.join(missing[:4])}")
    for key, value in state.items():
        if tuple(value.shape) != shapes[key]:
            raise UserError(f"{name}: {key} has shape {list(value.shape)}, its config implies {list(shapes[key])}")
    head.load_state_dict(state, strict=True)


def load_head(path: str, target, flag: str = "--ea-model-path"):
    """(head, input embedding, target layers) for `target`, on its device and in its dtype."""
    head, embed, layers = read_head(path, target_shape(target), flag)
    embedding = target.get_input_embeddings()
    device, dtype = embedding.weight.device, embedding.weight.dtype
    head.to(device=device, dtype=dtype).eval()   # buffers d2t / t2d keep their integer / bool types
    if embed is not None:
        embedding = torch.nn.Embedding.from_pretrained(embed.to(device=device, dtype=dtype))
    return head, embedding, layers


# --- Writing ----------------------------------------------------------------------------------------------------------

def eagle_rope_scaling(rope: dict) -> dict | None:
    """RoPE scaling as EAGLE's config class accepts it: none, or exactly {type: linear|dynamic, factor}."""
    kind = rope.get("rope_type", "default")
    if kind in ("linear", "dynamic"):
        return {"type": kind, "factor": float(rope["factor"])}
    return None


def legacy_rope_scaling(rope: dict) -> dict | None:
    """The older transformers field for readers without `rope_parameters` (vLLM before transformers 5)."""
    if rope.get("rope_type", "default") == "default":
        return None
    return {k: v for k, v in rope.items() if k != "rope_theta"}


def layer_fields(head: Eagle3Head) -> dict:
    """The decoder layer's Llama fields, both spellings of RoPE beside each other."""
    c = head.config
    rope = dict(c.rope_parameters)
    return {"hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "head_dim": head.midlayer.self_attn.head_dim, "hidden_act": c.hidden_act, "rms_norm_eps": c.rms_norm_eps,
            "max_position_embeddings": c.max_position_embeddings, "num_hidden_layers": 1,
            "attention_bias": bool(getattr(c, "attention_bias", False)), "tie_word_embeddings": False,
            "vocab_size": head.t2d.numel(), "rope_theta": rope.get("rope_theta"), "rope_parameters": rope}


def used_switches(head: Eagle3Head) -> dict:
    switches = {key: option(head.config, key) for key in SPECULATORS_SWITCHES}
    switches["qk_norm"] = option(head.config, "qk_norm")
    switches["no_final_norm"] = not option(head.config, "norm_before_lm_head", True)
    return switches


def eagle_config_json(head: Eagle3Head, layers, target_hidden: int, ship_embedding: bool) -> dict:
    refused = [key for key, on in used_switches(head).items() if on]
    if refused:
        raise UserError(f"the eagle format has no field EAGLE's own code reads for this head's {refused[0]}; "
                        "use --format speculators")
    fields = layer_fields(head)
    config = {"architectures": [ARCHITECTURE], "model_type": "llama", **fields,
              "draft_vocab_size": head.draft_vocab_size,
              # EAGLE's config class rejects any other rope_scaling; rope_parameters holds the exact RoPE.
              "rope_scaling": eagle_rope_scaling(fields["rope_parameters"]),
              # Both conventions of the same layers: SpecForge / SGLang count layer outputs, vLLM layer inputs.
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in layers]},
              "eagle_aux_hidden_state_layer_ids": list(layers)}
    # EAGLE loads the target's embedding only when this key is absent (else it drafts with the head's own).
    if target_hidden != head.config.hidden_size or ship_embedding:
        config["target_hidden_size"] = target_hidden
    return config


def speculators_config_json(head: Eagle3Head, layers, target_hidden: int, target_name: str | None,
                            speculative_tokens: int) -> dict:
    switches = used_switches(head)
    if switches["no_final_norm"]:
        raise UserError("the speculators format has no field for a head without a final norm (SpecForge's "
                        "norm_output: false); use --format eagle")
    fields = layer_fields(head)
    fields["model_type"] = "qwen3" if switches["qk_norm"] else "llama"   # the decoder layer with q/k norms
    fields["rope_scaling"] = legacy_rope_scaling(fields["rope_parameters"])
    config = {"architectures": [SPECULATORS_ARCHITECTURE], "speculators_model_type": "eagle3",
              "draft_vocab_size": head.draft_vocab_size,
              "target_hidden_size": None if target_hidden == head.config.hidden_size else target_hidden,
              "eagle_aux_hidden_state_layer_ids": list(layers),   # inputs of those layers, as vLLM reads them
              **{field: switches[key] for key, field in SPECULATORS_SWITCHES.items()},
              "tie_word_embeddings": False, "transformer_layer_config": fields,
              "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                     "proposal_methods": [{"proposal_type": "greedy",
                                                           "speculative_tokens": speculative_tokens}],
                                     "verifier": {"name_or_path": target_name, "architectures": []}}}
    return config


def save_head(head: Eagle3Head, layers: tuple[int, ...], directory: str, format: str = "eagle",
              target_name: str | None = None, embedding: torch.Tensor | None = None,
              speculative_tokens: int = 3) -> None:
    """config.json + model.safetensors in the `eagle` (flat, `midlayer.*`) or `speculators` (`layers.0.*`) layout.
    `embedding`: the target's input embedding, written as `embed_tokens.weight` for loaders that cannot read the
    target's own (EAGLE's code finds it only through a sharded target's index file)."""
    from safetensors.torch import save_file
    if format not in FORMATS:
        raise UserError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    target_hidden = head.fc.weight.shape[1] // len(layers)
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    if format == "eagle":
        config = eagle_config_json(head, layers, target_hidden, embedding is not None)
    else:
        config = speculators_config_json(head, layers, target_hidden, target_name, speculative_tokens)
        state = {("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in state.items()}
        if head.draft_vocab_size == head.t2d.numel():
            del state["d2t"], state["t2d"]   # the package keeps no mapping for a full draft vocabulary
    if embedding is not None:
        state["embed_tokens.weight"] = embedding.detach().to(head.fc.weight.dtype).contiguous().cpu()
    os.makedirs(directory, exist_ok=True)
    save_file(state, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def portability_notes(head: Eagle3Head, layers, num_layers: int, format: str) -> list[str]:
    """What EAGLE's own code will do differently with an eagle-format head (it has fixed rules for these)."""
    if format != "eagle":
        return []
    notes = []
    rope = dict(head.config.rope_parameters)
    if rope.get("rope_type", "default") not in ("default", "linear", "dynamic"):
        notes.append(f"EAGLE's config cannot express {rope['rope_type']} RoPE scaling: rope_scaling is written null, "
                     "so EAGLE's own code uses plain RoPE (rope_theta); rope_parameters keeps the exact one")
    if head.midlayer.self_attn.head_dim * head.config.num_attention_heads != head.config.hidden_size:
        notes.append("EAGLE's own code assumes head_dim = hidden_size / heads, which this head does not have")
    if tuple(layers) != default_layers(num_layers):
        notes.append(f"EAGLE's own code always reads layers {list(default_layers(num_layers))}, not {list(layers)}; "
                     "vLLM and SGLang read the ids in config.json")
    return notes


# --- Converting ------------------------------------------------------------------------------------------------------

def target_embedding(directory: str) -> torch.Tensor:
    """The input embedding from a local target checkpoint's safetensors files (without loading the model)."""
    from safetensors import safe_open
    if not os.path.isdir(directory):
        raise UserError(f"--ship-embedding reads the embedding from a local --target directory; {directory} is not one")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if key.endswith("embed_tokens.weight"):
                    return f.get_tensor(key)
    raise UserError(f"--target {directory}: no embed_tokens.weight in its safetensors files")


def convert_head(head_path: str, target: str, output: str, format: str, ship_embedding: bool = False) -> str:
    """Rewrite a head (any layout read here) for `target` in `format` to `output`; returns a one-line summary.
    Only the target's config is read (and its embedding's tensor with `ship_embedding`), not its weights."""
    from transformers import AutoConfig
    check_location(target, "--target")
    try:
        config = AutoConfig.from_pretrained(target)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot load a model config from --target {target}: {first_line(exc)}") from None
    config = getattr(config, "text_config", None) or config
    shape = TargetShape(config.hidden_size, config.vocab_size, config.num_hidden_layers)
    head, _, layers = read_head(head_path, shape, "--convert")
    embedding = target_embedding(target) if ship_embedding else None
    save_head(head, layers, output, format, target_name=target, embedding=embedding)
    for note in portability_notes(head, layers, shape.num_layers, format):
        print(f"note: {note}", file=sys.stderr)
    return f"head: {output} ({format} layout, target layers {list(layers)})"
