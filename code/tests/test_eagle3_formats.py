"""EAGLE-3 heads that travel both ways: what our writer emits is what each engine reads, and heads in each
published layout load here as their reference code loads them.

The references, and where their rules come from:
  * EAGLE (SafeAILab/EAGLE, eagle/model/cnets.py, configs.py, ea_model.py): not a package. Its config and
    weight-loading rules are restated in `eagle_rules` below from reading that source (written here, not copied).
  * SpecForge (`specforge==0.2.0`) pins torch 2.11, transformers 5.8.1 and sglang: not installable beside this
    project. Its rules are restated in `specforge_rules`; where `specforge` is importable anyway (its draft module
    needs none of those pins), `test_specforge_package_*` also runs its own `LlamaForCausalLMEagle3`.
  * vLLM / speculators (`speculators==0.9.0` requires torchvision, torchaudio and datasets<=5.1.0 against this
    project's pins): its rules (vLLM's speculators config reader, `Eagle3SpeculatorConfig`) are restated in
    `speculators_rules`; where `speculators` is importable, `test_speculators_package_*` runs its own
    `Eagle3DraftModel`.
Every reference computes its draft logits with `reference_steps`, an implementation of the EAGLE-3 head written from
the equations (float64, explicit attention), independent of model/eagle3/head.py.
"""
import importlib
import json
import os

import pytest
import torch

from conftest import VOCAB, make_tokenizer
from model.eagle3 import load_head, save_head
from model.eagle3.head import new_head

STEPS = 2   # a second draft step sees what the first one carries (norm_output's difference shows only there)
ROWS = 12


# --- An independent EAGLE-3 head ------------------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    """In float32 whatever x's dtype, as every reference's RMSNorm computes it."""
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate(x, angles):
    """RoPE in the rotate-half convention: x [..., n, d], angles [n, d/2] (float32, as every reference computes
    them: float32 frequencies times float32 positions, cos and sin in float32)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def reference_steps(w, o, embed, states, tokens, positions):
    """Draft logits [steps, rows, Vd] of `len(tokens)` training-time-test steps.

    w: weights by their published names (midlayer.*); o: shapes and switches (see the *_rules functions);
    states [rows, layers x Ht]; tokens [steps, rows]; positions [rows]. Step k row t gets step k-1's carried
    hidden of row t and tokens[k, t] at position positions[t] + k, and attends to step 0's rows <= t and to its own
    row in steps 1..k."""
    eps = o["eps"]
    x = states
    if o["norm_before_fc"]:
        x = rms_norm(x, w["input_norm.weight"], eps)
    if o["fc_norm"]:
        parts = x.chunk(o["layers"], dim=-1)
        x = torch.cat([rms_norm(p, w[f"fc_norm.{i}.weight"], eps) for i, p in enumerate(parts)], dim=-1)
    hidden = x @ w["fc.weight"].T
    heads, kv, d = o["heads"], o["kv_heads"], o["head_dim"]
    rows = len(states)
    keys, values, logits = [], [], []
    for k, step_tokens in enumerate(tokens):
        layer = "midlayer."
        a = torch.cat([rms_norm(embed[step_tokens], w[layer + "input_layernorm.weight"], eps),
                       rms_norm(hidden, w[layer + "hidden_norm.weight"], eps)], dim=-1)
        q = (a @ w[layer + "self_attn.q_proj.weight"].T).view(rows, heads, d)
        key = (a @ w[layer + "self_attn.k_proj.weight"].T).view(rows, kv, d)
        value = (a @ w[layer + "self_attn.v_proj.weight"].T).view(rows, kv, d)
        if o["qk_norm"]:
            q = rms_norm(q, w[layer + "self_attn.q_norm.weight"], eps)
            key = rms_norm(key, w[layer + "self_attn.k_norm.weight"], eps)
        angles = (positions + k)[:, None].float() * o["inv_freq"][None, :].float()
        q = rotate(q.transpose(0, 1), angles)             # [heads, rows, d]
        keys.append(rotate(key.transpose(0, 1), angles))  # [kv, rows, d]
        values.append(value.transpose(0, 1))
        group = heads // kv
        scores = [q @ keys[0].repeat_interleave(group, 0).transpose(1, 2) / d ** 0.5]
        causal = torch.ones(rows, rows, dtype=torch.bool).tril()
        scores[0] = scores[0].masked_fill(~causal, float("-inf"))
        scores += [(q * kk.repeat_interleave(group, 0)).sum(-1, keepdim=True) / d ** 0.5 for kk in keys[1:]]
        p = torch.cat(scores, dim=-1).softmax(-1)
        out = p[..., :rows] @ values[0].repeat_interleave(group, 0)
        for i, vv in enumerate(values[1:]):
            out = out + p[..., rows + i:rows + i + 1] * vv.repeat_interleave(group, 0)
        attended = out.transpose(0, 1).reshape(rows, heads * d) @ w[layer + "self_attn.o_proj.weight"].T
        residual = rms_norm(hidden, w[layer + "hidden_norm.weight"], eps) if o["norm_before_residual"] else hidden
        h = residual + attended
        m = rms_norm(h, w[layer + "post_attention_layernorm.weight"], eps)
        gate, up = m @ w[layer + "mlp.gate_proj.weight"].T, m @ w[layer + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ w[layer + "mlp.down_proj.weight"].T
        if o["feed_normed_hidden"]:
            h = rms_norm(h, w["norm.weight"], eps)
            logits.append(h @ w["lm_head.weight"].T)
        else:
            logits.append((rms_norm(h, w["norm.weight"], eps) if o["norm_logits"] else h) @ w["lm_head.weight"].T)
        hidden = h
    return torch.stack(logits)


def our_steps(head, embedding, states, tokens, positions):
    """The same steps through our head's inference path (KV cache + masks, as the drafter drives it)."""
    from transformers import DynamicCache
    cache = DynamicCache()
    rows = len(states)
    dtype = head.fc.weight.dtype
    hidden = head.project(states.to(dtype))
    logits = []
    eye = torch.eye(rows, dtype=torch.bool)
    mask = torch.ones(rows, rows, dtype=torch.bool).tril()
    with torch.no_grad():
        for k, step_tokens in enumerate(tokens):
            if k:
                mask = torch.cat([mask, eye], dim=1)
            hidden = head.step(embedding(step_tokens), hidden, positions + k, cache, mask)
            logits.append(head.logits(hidden))
    return torch.stack(logits).double()


def draft_inputs(width: int, seed: int = 1):
    """Random target states, tokens per step and positions (offset, so RoPE is not at its origin)."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(ROWS, width, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, VOCAB, (STEPS, ROWS), generator=g)
    return states, tokens, torch.arange(ROWS) + 5


# --- Targets ---------------------------------------------------------------------------------------------------------

def tiny_target(rope: str = "default", layers: int = 6, dtype=torch.float64):
    """A 6-layer tiny Llama: EAGLE's fixed layers 2, L//2, L-3 exist. `llama3`: Llama-3's RoPE scaling, with an
    original context (2^20) so long that every one of its 8 frequencies is in the band the scaling leaves alone,
    so the scaled and the plain RoPE coincide here (the test is about the fields, not their approximation)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    extra = {}
    if rope == "llama3":
        extra = dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 2 ** 20},
                     max_position_embeddings=2 ** 21)
    config = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                  **{"max_position_embeddings": 4096, **extra})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()


def save_target(model, directory) -> str:
    """Saved in shards, with the index file through which EAGLE finds the target's embedding."""
    model.save_pretrained(directory, max_shard_size="100KB")
    make_tokenizer().save_pretrained(directory)
    assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
    return str(directory)


def train_head(target_dir, out_dir, tmp_path, *flags) -> str:
    """A head written by our trainer (a few pre-tokenized sequences: the format is the point, not the quality)."""
    from model.eagle3.train import main
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "tokens.jsonl"
    with open(data, "w") as f:
        for _ in range(2):
            ids = torch.randint(2, VOCAB, (24,), generator=g).tolist()
            f.write(json.dumps({"input_ids": ids, "loss_mask": [0] * 4 + [1] * 20}) + "\n")
    assert main(["--target", target_dir, "--data", str(data), "--output", str(out_dir), "--draft-vocab", "200",
                 "--max-length", "24", "--ttt-length", "2", "--dtype", "float64", "--device", "cpu",
                 *flags]) == 0
    return str(out_dir)


def read_weights(directory):
    from safetensors.torch import load_file
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return load_file(path) if name.endswith(".safetensors") else torch.load(path, weights_only=True)
    raise FileNotFoundError(directory)


def read_config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


# --- EAGLE's rules (restated from SafeAILab/EAGLE's cnets.py, configs.py and ea_model.py) ---------------------------

def eagle_config_check(config):
    """EConfig's validation: rope_scaling is None or exactly {type: linear|dynamic, factor: float > 1}."""
    scaling = config.get("rope_scaling")
    if scaling is None:
        return
    if not isinstance(scaling, dict) or len(scaling) != 2:
        raise ValueError(f"EAGLE's EConfig rejects rope_scaling {scaling}: two fields, type and factor")
    if scaling.get("type") not in ("linear", "dynamic"):
        raise ValueError(f"EAGLE's EConfig rejects rope_scaling type {scaling.get('type')}")
    factor = scaling.get("factor")
    if not isinstance(factor, float) or factor <= 1.0:
        raise ValueError(f"EAGLE's EConfig rejects rope_scaling factor {factor}")


def target_embedding_through_index(target_dir):
    """EAGLE's Model reads `model.embed_tokens.weight` from the shard the target's index file names."""
    from safetensors import safe_open
    with open(os.path.join(target_dir, "model.safetensors.index.json")) as f:
        shard = json.load(f)["weight_map"]["model.embed_tokens.weight"]
    with safe_open(os.path.join(target_dir, shard), framework="pt") as f:
        return f.get_tensor("model.embed_tokens.weight")


def eagle_rules(head_dir, target_dir, num_layers):
    """(weights, options, embedding, layers) as EAGLE's own code would draft with them.

    Its rules: the config must pass EConfig; the embedding is loaded from the target only when config.json has no
    `target_hidden_size` (else the module's own, which load_state_dict(strict=False) fills from the weights if they
    have one and otherwise leaves random); `fc` is 3 x target_hidden_size (or 3 x hidden_size) wide; head_dim is
    hidden_size // heads, projections without bias; RoPE base is `rope_theta` (10000 without it), scaled only by
    a linear/dynamic rope_scaling; d2t/t2d are dropped when the vocabularies are equal; a missing weight stays at
    its random initialisation, an unknown one is ignored; the target's states are always the inputs of layers
    2, L//2 and L-3, whatever the config says."""
    config = read_config(head_dir)
    eagle_config_check(config)
    state = {k.removeprefix("model."): v.double() for k, v in read_weights(head_dir).items()}
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    assert hidden % heads == 0, "EAGLE's attention requires hidden_size divisible by the heads"
    head_dim = hidden // heads
    expected = {"fc.weight": (hidden, 3 * config.get("target_hidden_size", hidden)), "norm.weight": (hidden,),
                "lm_head.weight": (config["draft_vocab_size"], hidden)}
    for name in ("hidden_norm", "input_layernorm", "post_attention_layernorm"):
        expected[f"midlayer.{name}.weight"] = (hidden,)
    kv = config.get("num_key_value_heads") or heads
    for name, rows in (("q", heads), ("k", kv), ("v", kv)):
        expected[f"midlayer.self_attn.{name}_proj.weight"] = (rows * head_dim, 2 * hidden)
    expected["midlayer.self_attn.o_proj.weight"] = (hidden, heads * head_dim)
    inter = config["intermediate_size"]
    expected.update({"midlayer.mlp.gate_proj.weight": (inter, hidden), "midlayer.mlp.up_proj.weight": (inter, hidden),
                     "midlayer.mlp.down_proj.weight": (hidden, inter)})
    if config["vocab_size"] != config["draft_vocab_size"]:
        expected.update({"d2t": (config["draft_vocab_size"],), "t2d": (config["vocab_size"],)})
    for name, shape in expected.items():
        assert name in state, f"EAGLE would leave {name} at its random initialisation"
        assert tuple(state[name].shape) == shape, f"EAGLE's load_state_dict fails on {name}'s shape"
    if "target_hidden_size" not in config:
        embed = target_embedding_through_index(target_dir).double()
    elif "embed_tokens.weight" in state:
        embed = state["embed_tokens.weight"]
    else:
        embed = torch.nn.Embedding(config["vocab_size"], hidden).weight.detach().double()   # random: no warning
    base = config.get("rope_theta", 10000.0)
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    if (config.get("rope_scaling") or {}).get("type") == "linear":
        inv_freq = inv_freq / config["rope_scaling"]["factor"]
    options = dict(eps=config.get("rms_norm_eps", 1e-6), heads=heads, kv_heads=kv, head_dim=head_dim, layers=3,
                   inv_freq=inv_freq, norm_before_fc=False, fc_norm=False, norm_before_residual=False,
                   feed_normed_hidden=False, norm_logits=True, qk_norm=False)
    return state, options, embed, (2, num_layers // 2, num_layers - 3)


@pytest.mark.parametrize("rope", ["default", "llama3"])
def test_trained_head_drafts_the_same_under_eagles_rules(tmp_path, rope):
    """A head from our trainer, loaded by EAGLE's rules and by ours, gives the same draft logits (the old writer
    failed this: `target_hidden_size` always written, so EAGLE drafted with a random embedding; Llama-3's
    rope_scaling in the new dict form, which EConfig rejects)."""
    target = tiny_target(rope)
    target_dir = save_target(target, tmp_path / "target")
    head_dir = train_head(target_dir, tmp_path / "head", tmp_path)
    weights, options, embed, layers = eagle_rules(head_dir, target_dir, 6)
    head, embedding, our_layers = load_head(head_dir, target)
    assert our_layers == layers
    states, tokens, positions = draft_inputs(3 * 64)
    expected = reference_steps(weights, options, embed, states, tokens, positions)
    got = our_steps(head, embedding, states, tokens, positions)
    assert (got - expected).abs().max() < 1e-9
    if rope == "default":   # the converter: the same head in vLLM's speculators layout, read by its rules
        from model.eagle3.train import main
        converted = str(tmp_path / "speculators")
        flags = ["--convert", head_dir, "--target", target_dir, "--output", converted, "--format", "speculators"]
        assert main(flags) == 0
        assert max_logit_difference(converted, target, speculators_rules) < 1e-9
        assert main(flags) == 2   # never overwritten


def test_trainer_writes_the_speculators_layout(tmp_path):
    """`--format speculators` with custom layers: vLLM's rules find those layers (top-level ids, layer inputs)."""
    target = tiny_target()
    target_dir = save_target(target, tmp_path / "target")
    head_dir = train_head(target_dir, tmp_path / "head", tmp_path, "--format", "speculators",
                          "--layers", "1", "3", "4")
    config = read_config(head_dir)
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    assert config["speculators_config"]["verifier"]["name_or_path"] == target_dir
    assert max_logit_difference(head_dir, target, speculators_rules) < 1e-9


# --- SpecForge's rules (restated from sgl-project/SpecForge, specforge/modeling/draft/llama3_eagle.py) --------------

def renamed_weights(directory):
    """The weights under the flat names `reference_steps` uses (`layers.0.` is the one decoder layer)."""
    state = {}
    for key, value in read_weights(directory).items():
        key = key.removeprefix("model.")
        state["midlayer." + key[len("layers.0."):] if key.startswith("layers.0.") else key] = value.double()
    return state


def rope_frequencies(layer_config, head_dim):
    """Default RoPE from `rope_parameters` (transformers 5) or the legacy `rope_theta`."""
    base = (layer_config.get("rope_parameters") or {}).get("rope_theta", layer_config.get("rope_theta", 10000.0))
    return 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)


def specforge_rules(head_dir, target, num_layers):
    """SpecForge's LlamaForCausalLMEagle3 on a flat config: fc is 3 x target_hidden_size (default hidden_size)
    wide, `fc_norm` adds one RMSNorm per target layer, `norm_output` (default true) decides whether lm_head reads
    norm(h) or h, head_dim is the config's (else hidden / heads); SGLang reads eagle_config's layer ids as layer
    outputs (id i: the input of layer i + 1), default [1, L//2 - 1, L - 4]; no embed_tokens: the target's."""
    config = read_config(head_dir)
    state = renamed_weights(head_dir)
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    assert state["fc.weight"].shape[1] == 3 * config.get("target_hidden_size", hidden)
    ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") or \
        [1, num_layers // 2 - 1, num_layers - 4]
    embed = state.pop("embed_tokens.weight", None)
    options = dict(eps=config["rms_norm_eps"], heads=heads, kv_heads=config["num_key_value_heads"],
                   head_dim=head_dim, layers=3, inv_freq=rope_frequencies(config, head_dim), norm_before_fc=False,
                   fc_norm=bool(config.get("fc_norm", False)), norm_before_residual=False, feed_normed_hidden=False,
                   norm_logits=bool(config.get("norm_output", True)), qk_norm=False)
    if embed is None:
        embed = target.get_input_embeddings().weight.detach().double()
    return state, options, embed, tuple(i + 1 for i in ids)


# --- vLLM's rules for the speculators layout (restated from vLLM's speculators config reader and llama_eagle3.py,
# --- and from speculators' Eagle3SpeculatorConfig / Eagle3DraftModel) -----------------------------------------------

def speculators_rules(head_dir, target, num_layers):
    """The layer's config is `transformer_layer_config`; the algorithm's fields are top-level: draft_vocab_size,
    target_hidden_size (null: the layer's hidden size), eagle_aux_hidden_state_layer_ids (the inputs of those
    layers; default 2, L//2, L-3), norm_before_residual (vLLM: true when absent), norm_before_fc (`input_norm`),
    fc_norm (`fc_norm.i`), norm_output (the next step gets norm(h), lm_head reads it); a qwen3 layer adds per-head
    q/k norms; vLLM insists on speculators_config.proposal_methods[0].speculative_tokens and
    speculators_config.verifier.name_or_path."""
    config = read_config(head_dir)
    assert config["speculators_model_type"] == "eagle3"
    spec = config["speculators_config"]
    assert spec["proposal_methods"][0]["speculative_tokens"] >= 1 and "name_or_path" in spec["verifier"]
    layer = config["transformer_layer_config"]
    assert isinstance(layer, dict) and layer.get("num_hidden_layers", 1) == 1
    hidden, heads = layer["hidden_size"], layer["num_attention_heads"]
    head_dim = layer.get("head_dim") or hidden // heads
    ids = config.get("eagle_aux_hidden_state_layer_ids") or [2, num_layers // 2, num_layers - 3]
    state = renamed_weights(head_dir)
    assert state["fc.weight"].shape[1] == len(ids) * (config.get("target_hidden_size") or hidden)
    embed = state.pop("embed_tokens.weight", None)
    if embed is None:
        embed = target.get_input_embeddings().weight.detach().double()
    options = dict(eps=layer["rms_norm_eps"], heads=heads, kv_heads=layer["num_key_value_heads"], head_dim=head_dim,
                   layers=len(ids), inv_freq=rope_frequencies(layer, head_dim),
                   norm_before_fc=bool(config.get("norm_before_fc", False)), fc_norm=bool(config.get("fc_norm", False)),
                   norm_before_residual=bool(config.get("norm_before_residual", True)),
                   feed_normed_hidden=bool(config.get("norm_output", False)), norm_logits=True,
                   qk_norm=layer.get("model_type") == "qwen3")
    return state, options, embed, tuple(ids)


# --- Heads in each published layout, written here from those facts (not by our writer) -------------------------------

VARIANTS = {   # head variant switches (model/eagle3/head.py) each layout can carry
    "plain": {},
    "eagle-3.1": {"norm_before_fc": True, "norm_before_residual": True, "feed_normed_hidden": True},
    "fc-norm-qwen3-layer": {"fc_norm": True, "qk_norm": True},
    "specforge-no-final-norm": {"fc_norm": True, "norm_before_lm_head": False},
}


def variant_head(target, switches, layers=3, seed=3):
    """A random head with the given variant switches; norm weights random too, so every norm matters."""
    from model.eagle3.head import Eagle3Head, head_config
    config = head_config(target.config, VOCAB)
    for key, value in switches.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    head = Eagle3Head(config, target.config.hidden_size, VOCAB, 200, layers).double()
    with torch.no_grad():
        for name, param in head.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
        draft_ids = torch.randperm(VOCAB)[:200].sort().values
        head.d2t.copy_(draft_ids - torch.arange(200))
        head.t2d.zero_()
        head.t2d[draft_ids] = True
    return head.eval()


def layer_dict(head, model_type="llama"):
    c = head.config
    return {"model_type": model_type, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "head_dim": head.midlayer.self_attn.head_dim, "num_hidden_layers": 1, "rms_norm_eps": c.rms_norm_eps,
            "hidden_act": "silu", "max_position_embeddings": 4096, "vocab_size": VOCAB,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}


def write_published(head, directory, layout, layer_ids, switches):
    """`head` as SpecForge (flat) or speculators (nested) write theirs."""
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    if layout == "flat":
        config = {"architectures": ["LlamaForCausalLMEagle3"], **layer_dict(head), "draft_vocab_size": 200,
                  "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(layer_ids)}}
        if switches.get("fc_norm"):
            config["fc_norm"] = True
        if switches.get("norm_before_lm_head") is False:
            config["norm_output"] = False
    else:
        state = {("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in state.items()}
        config = {"architectures": ["Eagle3DraftModel"], "speculators_model_type": "eagle3", "draft_vocab_size": 200,
                  "target_hidden_size": None, "eagle_aux_hidden_state_layer_ids": list(layer_ids),
                  "norm_before_residual": bool(switches.get("norm_before_residual")),
                  "norm_before_fc": bool(switches.get("norm_before_fc")), "fc_norm": bool(switches.get("fc_norm")),
                  "norm_output": bool(switches.get("feed_normed_hidden")),
                  "transformer_layer_config": layer_dict(head, "qwen3" if switches.get("qk_norm") else "llama"),
                  "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                         "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
                                         "verifier": {"name_or_path": "tiny-target", "architectures": []}}}
    save_file(state, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return str(directory)


def max_logit_difference(head_dir, target, rules):
    """Largest |draft logit difference| between the reference's rules and our loader, same inputs."""
    weights, options, embed, layers = rules(head_dir, target, 6)
    head, embedding, our_layers = load_head(head_dir, target)
    assert our_layers == layers
    states, tokens, positions = draft_inputs(len(layers) * 64)
    return (our_steps(head, embedding, states, tokens, positions)
            - reference_steps(weights, options, embed, states, tokens, positions)).abs().max().item()


@pytest.mark.parametrize("variant", ["plain", "fc-norm-qwen3-layer", "eagle-3.1"])
def test_speculators_layout_reads_as_vllm_reads_it(tmp_path, variant):
    target = tiny_target()
    switches = VARIANTS[variant]
    head = variant_head(target, switches)
    directory = write_published(head, tmp_path / "head", "speculators", [1, 3, 4], switches)
    assert max_logit_difference(directory, target, speculators_rules) < 1e-9
    # and back out through our writer in the same layout, read again by the same rules
    loaded, _, layers = load_head(directory, target)
    save_head(loaded, layers, str(tmp_path / "again"), "speculators", target_name="tiny-target")
    assert max_logit_difference(str(tmp_path / "again"), target, speculators_rules) < 1e-9


@pytest.mark.parametrize("variant", ["plain", "specforge-no-final-norm"])
def test_specforge_layout_reads_as_specforge_reads_it(tmp_path, variant):
    target = tiny_target()
    switches = VARIANTS[variant]
    directory = write_published(variant_head(target, switches), tmp_path / "head", "flat", [0, 2, 3], switches)
    assert max_logit_difference(directory, target, specforge_rules) < 1e-9


def test_eagle_layout_fields(tmp_path):
    """What each engine reads from our eagle layout: no target_hidden_size (EAGLE then takes the target's
    embedding), EAGLE-acceptable rope_scaling next to rope_parameters, custom layers in both conventions; with the
    embedding shipped, target_hidden_size and embed_tokens instead, loadable by EAGLE from a single-file target."""
    target = tiny_target()
    head = new_head(target, torch.arange(0, VOCAB, 2))
    save_head(head, (1, 3, 4), str(tmp_path / "plain"))
    config = read_config(tmp_path / "plain")
    assert "target_hidden_size" not in config and config["rope_scaling"] is None and config["rope_theta"] == 10000.0
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 2, 3]
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    head.config.rope_parameters = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    embedding = target.get_input_embeddings().weight
    save_head(head, (2, 3, 3), str(tmp_path / "shipped"), embedding=embedding)
    config = read_config(tmp_path / "shipped")
    assert config["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert config["rope_parameters"]["rope_type"] == "linear" and config["target_hidden_size"] == 64
    target.save_pretrained(tmp_path / "single-file")   # no index: EAGLE could not find its embedding there
    weights, options, embed, layers = eagle_rules(str(tmp_path / "shipped"), str(tmp_path / "single-file"), 6)
    assert torch.equal(embed, embedding.double()) and layers == (2, 3, 3)
    ours, our_embedding, _ = load_head(str(tmp_path / "shipped"), target)
    states, tokens, positions = draft_inputs(3 * 64)
    assert (our_steps(ours, our_embedding, states, tokens, positions)
            - reference_steps(weights, options, embed, states, tokens, positions)).abs().max() < 1e-9


def test_bf16_training_keeps_the_loaders_rope(tmp_path):
    """The trainer's head of a bfloat16 target rotates with the float32 frequencies the loader rebuilds (rounding
    them to bfloat16 moved angles by radians at a distance of 1,000 tokens)."""
    from model.eagle3.train import training_head
    target = tiny_target(dtype=torch.bfloat16)
    head = training_head(target, torch.arange(0, VOCAB, 2), (2, 3, 3), random_init=False)
    exact = 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16)
    assert head.rotary.inv_freq.dtype == torch.float32 and torch.equal(head.rotary.inv_freq, exact)
    save_head(head.to(torch.bfloat16), (2, 3, 3), str(tmp_path))   # as the trainer saves it
    loaded, _, _ = load_head(str(tmp_path), target)
    assert torch.equal(head.rotary.inv_freq, loaded.rotary.inv_freq)
    x, positions = torch.zeros(1, 1, 16, dtype=torch.bfloat16), torch.tensor([[1000]])
    assert all(torch.equal(a, b) for a, b in zip(head.rope(x, positions), loaded.rope(x, positions)))
    rounded = exact.to(torch.bfloat16).float()
    assert (1000 * (exact - rounded)).abs().max() > 0.1   # the error the old cast made


@pytest.mark.parametrize("change, fragment", [
    ("two-layers", "transformer_layer_config.num_hidden_layers is 2"),
    ("both-fc-norms", "norm_before_fc and fc_norm are exclusive"),
    ("not-eagle3", "speculators_model_type 'eagle' is not an EAGLE-3 head"),
    ("last-layer-output", "the output of the last layer is not captured here"),
    ("ids-disagree", "disagree"),
    ("undeclared-norm", "weights its config declares no use for: input_norm.weight")])
def test_unsupported_heads_are_one_line_errors(tmp_path, change, fragment):
    from model.errors import UserError
    target = tiny_target()
    switches = {"norm_before_fc": True} if change == "undeclared-norm" else {}
    layout = "flat" if change == "ids-disagree" else "speculators"
    ids = [1, 3, 6] if change == "last-layer-output" else [1, 3, 4]
    directory = write_published(variant_head(target, switches), tmp_path, layout, ids, switches)
    config = read_config(directory)
    if change == "two-layers":
        config["transformer_layer_config"]["num_hidden_layers"] = 2
    if change == "both-fc-norms":
        config["norm_before_fc"] = config["fc_norm"] = True
    if change == "not-eagle3":
        config["speculators_model_type"] = "eagle"
    if change == "ids-disagree":
        config["eagle_aux_hidden_state_layer_ids"] = [1, 3, 4]   # nested [1, 3, 4] means inputs 2, 4, 5
    if change == "undeclared-norm":
        config["norm_before_fc"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=fragment) as error:
        load_head(directory, target)
    assert "\n" not in str(error.value)


def test_eagle_format_refuses_a_variant_eagle_cannot_read(tmp_path):
    from model.errors import UserError
    head = variant_head(tiny_target(), VARIANTS["eagle-3.1"])
    with pytest.raises(UserError, match="use --format speculators"):
        save_head(head, (1, 3, 4), str(tmp_path))


# --- The reference packages themselves, where they import ------------------------------------------------------------

def reference_package(module: str, name: str):
    """A class from a reference package; a skip only when the package itself is not installed (`make refs` installs
    it). Any other failure (a broken install, an API that moved) fails the test."""
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise
        pytest.skip(f"the reference package {exc.name} is not installed (`make refs` installs it)")
    return getattr(imported, name)


def teacher_forced(tokens):
    """Step 1's tokens as the packages' training-time test feeds them: step 0's shifted by one (0 past the end)."""
    return torch.stack([tokens[0], torch.cat([tokens[0][1:], torch.zeros(1, dtype=torch.long)])])


def speculators_logits(model, states, tokens, positions):
    """Draft logits of speculators' own Eagle3DraftModel (its training forward, lm_head outputs caught)."""
    caught = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: caught.append(out[0]))
    with torch.no_grad():
        model(hidden_states=states[None], input_ids=tokens[0][None], position_ids=positions[None],
              document_ids=torch.zeros(1, len(states), dtype=torch.long), ttt_steps=len(tokens))
    handle.remove()
    return torch.stack(caught).double()


def speculators_model(directory, target):
    """speculators' own loading of a head directory (dense attention on the CPU, the target's embedding shared as
    vLLM shares it)."""
    config_class = reference_package("speculators.models.eagle3", "Eagle3SpeculatorConfig")
    model_class = reference_package("speculators.models.eagle3", "Eagle3DraftModel")
    config = config_class.from_pretrained(directory)
    config.transformer_layer_config._attn_implementation = "sdpa"
    model = model_class.from_pretrained(directory, config=config, dtype=torch.float64).eval()
    with torch.no_grad():
        model.embed_tokens.weight.copy_(target.get_input_embeddings().weight)
    return model


@pytest.mark.parametrize("variant", ["plain", "eagle-3.1", "fc-norm-qwen3-layer"])
def test_speculators_package_heads_load_here_and_ours_there(tmp_path, variant):
    """speculators' Eagle3DraftModel writes a head; we load it; we write it back; it loads ours: the same logits."""
    config_class = reference_package("speculators.models.eagle3", "Eagle3SpeculatorConfig")
    model_class = reference_package("speculators.models.eagle3", "Eagle3DraftModel")
    from speculators import SpeculatorsConfig, VerifierConfig
    from speculators.proposals.greedy import GreedyTokenProposalConfig
    from transformers import LlamaConfig, Qwen3Config
    switches = VARIANTS[variant]
    target = tiny_target()
    target_dir = save_target(target, tmp_path / "target")
    shape = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 num_hidden_layers=1, vocab_size=VOCAB, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    layer = (Qwen3Config if switches.get("qk_norm") else LlamaConfig)(**shape)
    layer._attn_implementation = "sdpa"
    config = config_class(
        transformer_layer_config=layer, draft_vocab_size=200, eagle_aux_hidden_state_layer_ids=[1, 3, 4],
        norm_before_residual=bool(switches.get("norm_before_residual")),
        norm_before_fc=bool(switches.get("norm_before_fc")), fc_norm=bool(switches.get("fc_norm")),
        norm_output=bool(switches.get("feed_normed_hidden")),
        speculators_config=SpeculatorsConfig(
            algorithm="eagle3", default_proposal_method="greedy",
            proposal_methods=[GreedyTokenProposalConfig(speculative_tokens=3)],
            verifier=VerifierConfig(name_or_path=target_dir, architectures=["LlamaForCausalLM"])))
    torch.manual_seed(0)
    theirs = model_class(config).double().eval()
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif param.isnan().any():   # lm_head and the embedding start as NaN until loaded
                param.normal_(0, 0.1)
        theirs.embed_tokens.weight.copy_(target.get_input_embeddings().weight)
    draft_ids = torch.randperm(VOCAB)[:200].sort().values
    t2d = torch.zeros(VOCAB, dtype=torch.bool)
    t2d[draft_ids] = True
    theirs.load_vocab_mappings(t2d, draft_ids - torch.arange(200))
    theirs.save_pretrained(tmp_path / "theirs")
    states, tokens, positions = draft_inputs(3 * 64)
    tokens = teacher_forced(tokens)
    expected = speculators_logits(theirs, states, tokens, positions)
    head, embedding, layers = load_head(str(tmp_path / "theirs"), target)
    assert layers == (1, 3, 4)
    assert (our_steps(head, embedding, states, tokens, positions) - expected).abs().max() < 1e-9
    save_head(head, layers, str(tmp_path / "ours"), "speculators", target_name=target_dir)
    again = speculators_model(str(tmp_path / "ours"), target)
    assert list(again.config.eagle_aux_hidden_state_layer_ids) == [1, 3, 4]
    assert (speculators_logits(again, states, tokens, positions) - expected).abs().max() < 1e-9


def specforge_logits(directory, target, states, tokens, positions):
    """Draft logits of SpecForge's own LlamaForCausalLMEagle3 on a flat head (its training-time-test path)."""
    model_class = reference_package("specforge.modeling.draft.llama3_eagle", "LlamaForCausalLMEagle3")
    from specforge.modeling.draft.llama3_eagle import prepare_decoder_attention_mask
    from transformers import LlamaConfig
    model = model_class(LlamaConfig.from_dict(read_config(directory))).double().eval()
    state = {k.removeprefix("model."): v for k, v in read_weights(directory).items()}
    state.setdefault("embed_tokens.weight", target.get_input_embeddings().weight.detach())
    model.load_state_dict(state, strict=True)
    logits, cache = [], [[], []]
    # Its RMSNorm is torch.compile'd; eager is the same computation and needs no compiler here.
    with torch.no_grad(), torch._dynamo.config.patch(disable=True):
        hidden = model.project_hidden_states(states[None])
        # Its mask builder works in float32 only (float64's minimum overflows there); the mask is the same.
        mask = prepare_decoder_attention_mask(torch.ones(1, len(states), dtype=torch.bool), (1, len(states)),
                                              hidden.float(), 0).double()
        for step_tokens in tokens:   # it adds the step to the positions itself
            hidden = model.backbone(model.embed_input_ids(step_tokens[None]), hidden, cache, mask,
                                    positions[None], use_cache=False)
            logits.append(model.compute_logits(hidden)[0])
    return torch.stack(logits).double()


@pytest.mark.parametrize("variant", ["ours", "plain", "specforge-no-final-norm"])
def test_specforge_package_reads_heads_as_we_do(tmp_path, variant):
    """SpecForge's own draft module on a flat head (ours, or one in its layout): the same logits as our loader."""
    reference_package("specforge.modeling.draft.llama3_eagle", "LlamaForCausalLMEagle3")
    target = tiny_target()
    if variant == "ours":
        directory = str(tmp_path)
        save_head(new_head(target, torch.arange(0, VOCAB, 2)), (2, 3, 4), directory)
    else:
        switches = VARIANTS[variant]
        directory = write_published(variant_head(target, switches), tmp_path, "flat", [1, 2, 3], switches)
    states, tokens, _ = draft_inputs(3 * 64)
    positions = torch.arange(ROWS)   # its RoPE cache covers positions up to the sequence's length only
    expected = specforge_logits(directory, target, states, tokens, positions)
    head, embedding, layers = load_head(directory, target)
    assert layers == (2, 3, 4)
    # Its attention's softmax runs in float32 whatever the dtype: agreement to float32's precision, not float64's.
    assert (our_steps(head, embedding, states, tokens, positions) - expected).abs().max() < 1e-6
