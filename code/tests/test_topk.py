"""The engine's CPU top-k (block maxima) returns torch.topk's values, at every shape the engine asks for."""
import pytest
import torch

from model.engine.topk import topk


@pytest.mark.parametrize("shape", [(49152,), (3, 49152), (2, 5, 1000), (4, 151936), (2, 513), (1, 100)])
@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_indices_are_torch_topk_s(shape, k, dtype):
    g = torch.Generator().manual_seed(sum(shape) + k)
    x = torch.randn(shape, generator=g, dtype=dtype) * 4
    values, indices = topk(x, k)
    ref = x.topk(k, dim=-1)
    assert torch.equal(values, ref.values)
    assert torch.equal(indices, ref.indices)   # distinct values: the indices are determined


def test_ties_masked_entries_and_peaked_rows():
    x = torch.full((3, 4096), float("-inf"))
    x[0, [5, 700, 4000]] = 1.0                 # fewer finite entries than k, all tied
    x[1] = 0.0                                  # a flat row
    x[2, 3000:3010] = torch.arange(10.0)        # the top-k inside one block
    values, indices = topk(x, 5)
    assert torch.equal(values, x.topk(5, dim=-1).values)
    assert torch.equal(x.gather(-1, indices), values)   # the indices hold those values
    assert set(indices[0, :3].tolist()) == {5, 700, 4000}
    assert indices[2].tolist() == [3009, 3008, 3007, 3006, 3005]
    assert len(set(indices[1].tolist())) == 5             # distinct positions, even among ties
