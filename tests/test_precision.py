"""Lower-precision copies (kdistill.precision): copies, not the model; the scheme each variant names; a clear error
for an unknown one; SmoothQuant's scales in closed form, the float function kept, and the int8 error it saves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdistill.precision import (
    VARIANTS,
    SmoothedLinear,
    input_ranges,
    int8_copy,
    int8_rows,
    low_precision,
    smooth_copy,
)


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
    assert VARIANTS == ("int8", "int8-pc", "int8-sq", "bf16")
    with pytest.raises(ValueError, match="unknown precision 'int4'; choose from int8, int8-pc, int8-sq, bf16"):
        low_precision(model, "int4")


def _outlier_inputs(n: int = 256) -> torch.Tensor:
    """Inputs with two channels 60 times wider than the rest, as a transformer's activations have."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 16, generator=g)
    x[:, 3] *= 60
    x[:, 11] *= 60
    return x


def test_input_ranges_record_each_linears_largest_input_per_channel() -> None:
    model, x = _mlp(), _outlier_inputs()
    ranges = input_ranges(model, lambda m: m(x))
    assert set(ranges) == {"0", "2"} and model.training  # every Linear by name; the mode restored
    assert torch.equal(ranges["0"], x.abs().amax(0))
    with torch.no_grad():
        hidden = model[1](model[0](x))
    assert torch.allclose(ranges["2"], hidden.abs().amax(0))
    with pytest.raises(ValueError, match="ran no nn.Linear"):
        input_ranges(model, lambda m: None)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.85, 1.0])
def test_smooth_copy_scales_in_closed_form_and_keeps_the_float_function(alpha: float) -> None:
    model, x = _mlp(), _outlier_inputs()
    smoothed = smooth_copy(model, lambda m: m(x), alpha)
    first = smoothed[0]
    assert isinstance(first, SmoothedLinear) and isinstance(smoothed[2], SmoothedLinear)
    assert type(model[0]) is nn.Linear and model.training  # the model itself untouched
    s = x.abs().amax(0) ** alpha / model[0].weight.detach().abs().amax(0) ** (1 - alpha)  # SmoothQuant's s_j
    assert torch.allclose(first.inv_scale, 1 / s, rtol=1e-5)
    assert torch.allclose(first.linear.weight, model[0].weight.detach() * s, rtol=1e-5)
    with torch.no_grad():
        assert torch.allclose(smoothed(x), model.eval()(x), rtol=1e-4, atol=1e-4)
    if alpha == 1.0:  # every input channel of the first Linear now spans exactly [-1, 1]
        assert torch.allclose((x * first.inv_scale).abs().amax(0), torch.ones(16), atol=1e-5)
    with pytest.raises(ValueError, match=r"alpha 1.5 must lie in \[0, 1\]"):
        smooth_copy(model, lambda m: m(x), 1.5)


def test_smoothing_cuts_the_int8_error_of_outlier_channels() -> None:
    """Two wide input channels set the per-call activation scale and leave the others a few grid levels; after
    smoothing the int8 copy's error is several times smaller, with the same per-row weight scheme."""
    model, x = _mlp().eval(), _outlier_inputs()
    with torch.no_grad():
        ref = model(x)
        plain = float((int8_copy(model)(x) - ref).abs().mean())
        smooth = float((int8_copy(model, calibrate=lambda m: m(x))(x) - ref).abs().mean())
        via_variant = float((low_precision(model, "int8-sq", lambda m: m(x))(x) - ref).abs().mean())
    assert smooth < plain / 2  # 0.36 against 1.35 here
    assert via_variant == pytest.approx(smooth)
    q = int8_copy(model, calibrate=lambda m: m(x))
    assert isinstance(q[0], SmoothedLinear) and q[0].linear.weight().qscheme() == torch.per_channel_affine
    with pytest.raises(ValueError, match="int8-sq \\(SmoothQuant\\) needs calibrate"):
        low_precision(model, "int8-sq")


def test_smoothing_a_tied_head_leaves_the_embedding_it_shares_alone() -> None:
    """A language model's head shares its weight with the token embeddings: smoothing the head's columns must not
    rescale the embedding table the copy reads its inputs from."""

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.head = nn.Embedding(20, 8), nn.Linear(8, 20, bias=False)
            self.head.weight = self.emb.weight  # tied, as nanoGPT and GPT-2 do

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.emb(ids)) * torch.arange(1, 9.0))

    torch.manual_seed(0)
    model, ids = TinyLM(), torch.randint(0, 20, (4, 6))
    smoothed = smooth_copy(model, lambda m: m(ids), 0.85)
    assert torch.equal(smoothed.emb.weight, model.emb.weight)
    with torch.no_grad():
        assert torch.allclose(smoothed(ids), model(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("smooth", [False, True])
def test_int8_copy_keeps_the_linears_it_is_told_to_in_float(smooth: bool) -> None:
    model, x = _mlp(), _outlier_inputs()
    calibrate = (lambda m: m(x)) if smooth else None
    q = int8_copy(model, calibrate=calibrate, keep_float=lambda name: name == "2")
    first, last = (q[0].linear, q[2].linear) if smooth else (q[0], q[2])
    assert type(last) is nn.Linear and type(first) is not nn.Linear  # "2" by its name in the model, not the copy
    assert first.weight().qscheme() == torch.per_channel_affine
    assert torch.equal(int8_copy(model, keep_float=lambda name: True)(x), model.eval()(x))  # nothing quantised


def test_smoothing_a_linear_used_in_two_places_smooths_both_uses() -> None:
    """One Linear module applied at two places (shared weights): both uses must see the scaled inputs, or the copy
    computes another function."""
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = _outlier_inputs()
    smoothed = smooth_copy(model, lambda m: m(x), 0.85)
    assert isinstance(smoothed[0], SmoothedLinear) and smoothed[0] is smoothed[2]
    with torch.no_grad():
        assert torch.allclose(smoothed(x), model(x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(smooth_copy(shared, lambda m: m(x))(x), shared(x), rtol=1e-4, atol=1e-4)  # alone


def test_int8_rows_is_the_grid_the_int8_copy_stores() -> None:
    """The same per-row scale and values as the kernel's stored weights; only a row's largest magnitude, exactly
    half-way between two levels (127.5 steps), may round one step apart."""
    model = _mlp()
    w = model[0].weight.detach()
    stored, grid = int8_copy(model)[0].weight().dequantize().float(), int8_rows(w)
    step = (w.abs().amax(1, keepdim=True) / 127.5).expand_as(w)
    tie = ((w / step).abs() - 127.5).abs() < 1e-4
    assert torch.allclose(grid[~tie], stored[~tie], rtol=0, atol=1e-6)
    assert ((grid - stored).abs()[tie] <= step[tie] * 1.0001).all() and int(tie.sum()) <= len(w)
