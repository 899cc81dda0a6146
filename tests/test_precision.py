"""Lower-precision copies (kdistill.precision): copies, not the model; the scheme each variant names; a clear error
for an unknown one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdistill.precision import VARIANTS, int8_copy, low_precision


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        m[0].weight[0] *= 50  # one row far larger than the others: a per-matrix scale coarsens every other row
    return m.train()


def test_int8_copies_quantise_every_linear_and_leave_the_model_alone() -> None:
    model = _mlp()
    x = torch.randn(64, 16)
    with torch.no_grad():
        ref = model(x)
        per_row, per_matrix = int8_copy(model), int8_copy(model, per_channel=False)
        err_row = float((per_row(x) - ref).abs().max())
        err_matrix = float((per_matrix(x) - ref).abs().max())
    assert model.training and all(type(m) is nn.Linear for m in (model[0], model[2]))  # untouched
    for q in (per_row, per_matrix):
        assert not q.training and not any(type(m) is nn.Linear for m in q.modules())
    assert per_row[0].weight().qscheme() == torch.per_channel_affine
    assert per_matrix[0].weight().qscheme() == torch.per_tensor_affine
    assert 0.0 < err_row < err_matrix  # the outsized row no longer sets the grid of the others


def test_low_precision_names_each_variant_and_refuses_others() -> None:
    model = _mlp()
    half = low_precision(model, "bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert low_precision(model, "int8-pc")[0].weight().qscheme() == torch.per_channel_affine
    assert low_precision(model, "int8")[0].weight().qscheme() == torch.per_tensor_affine
    assert VARIANTS == ("int8", "int8-pc", "bf16")
    with pytest.raises(ValueError, match="unknown precision 'int4'; choose from int8, int8-pc, bf16"):
        low_precision(model, "int4")
