"""The target's hidden states at chosen layers, caught during the forwards the engine runs anyway.

Layer i's entry is what `output_hidden_states` calls `hidden_states[i]`: the input of decoder layer i (0 = the
embeddings). Forward pre-hooks keep only the chosen layers, so a long prefill does not hold every layer's states
and no second forward is needed.
"""
from __future__ import annotations

import torch

from ..errors import UserError


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of decoder layers, found by shape rather than by attribute name (no per-model code)."""
    count = getattr(model.config, "num_hidden_layers", None)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for module in (decoder, model):
        for child in module.modules():
            if isinstance(child, torch.nn.ModuleList) and len(child) == count:
                return child
    raise UserError(f"cannot find the {count} decoder layers of {type(model).__name__}")


class HiddenCapture:
    def __init__(self, model, layers: tuple[int, ...]):
        stack = decoder_layers(model)
        bad = [i for i in layers if not 0 <= i < len(stack)]
        if bad:
            raise UserError(f"hidden-state layers {bad} are outside the target's 0..{len(stack) - 1}")
        self.layers = tuple(layers)
        self.device = model.get_input_embeddings().weight.device
        self.states: dict[int, torch.Tensor] = {}
        self.handles = [stack[i].register_forward_pre_hook(self._keeper(i), with_kwargs=True) for i in self.layers]

    def _keeper(self, index: int):
        def keep(module, args, kwargs):
            self.states[index] = args[0] if args else kwargs["hidden_states"]
        return keep

    def take(self, rows: list[int] | None = None, batch_row: int = 0) -> torch.Tensor:
        """[len(rows), layers x hidden] from one batch row of the last forward, the chosen layers side by side."""
        parts = [self.states[i][batch_row] for i in self.layers]
        if rows is not None:
            parts = [part.index_select(0, torch.tensor(rows, device=part.device)) for part in parts]
        return torch.cat([part.to(self.device) for part in parts], dim=-1)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.states.clear()
