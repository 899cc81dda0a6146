"""Lower-precision copies (kdistill.precision): copies, not the model; the scheme each variant names; a clear error
for an unknown one; SmoothQuant's scales in closed form, the float function kept, and the int8 error it saves;
Linears that read one input fused into one, with the same int8 result."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdistill.precision import (
    VARIANTS,
    FusedLinears,
    LinearPart,
    SmoothedLinear,
    input_ranges,
    int8_copy,
    int8_rows,
    low_precision,
    observe_inputs,
    smooth_copy,
)
from tests.helpers import outlier_inputs


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


def test_input_ranges_record_each_linears_largest_input_per_channel() -> None:
    model, x = _mlp(), outlier_inputs()
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
    model, x = _mlp(), outlier_inputs()
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
    model, x = _mlp().eval(), outlier_inputs()
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
    model, x = _mlp(), outlier_inputs()
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
    x = outlier_inputs()
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


class _Attention(nn.Module):
    """Three Linears on one input (query, key, value), one on another (the output), and one Linear shared by two
    places with different inputs: what :func:`observe_inputs` must tell apart."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.query, self.key, self.value = nn.Linear(16, 8), nn.Linear(16, 8, bias=False), nn.Linear(16, 12)
        self.out, self.shared = nn.Linear(12, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1)
        h = self.shared(x + self.out(attn @ v))
        return self.shared(torch.tanh(h))


def _tokens(n: int = 4) -> torch.Tensor:
    x = torch.stack([outlier_inputs(6) for _ in range(n)])  # (n, 6 tokens, 16)
    return x + torch.arange(n).view(-1, 1, 1)  # each sequence its own


def test_observe_inputs_groups_only_linears_that_always_read_the_same_tensor() -> None:
    model, x = _Attention(), _tokens()
    ranges, groups = observe_inputs(model, lambda m: [m(x[i : i + 2]) for i in range(0, 4, 2)])
    assert groups == [("query", "key", "value")]  # not "out" (its own input) nor "shared" (two inputs)
    assert torch.equal(ranges["query"], x.abs().amax((0, 1))) and torch.equal(ranges["key"], ranges["query"])
    # one Linear applied twice to one tensor is no group of its own
    twice, same = nn.Linear(4, 4), torch.ones(2, 4)
    assert observe_inputs(twice, lambda m: (m(same), m(same)))[1] == []


@pytest.mark.parametrize("alpha", [None, 0.85])
def test_fused_linears_compute_the_same_function_and_smooth_with_one_scale(alpha: float | None) -> None:
    model, x = _Attention().eval(), _tokens()
    fused = smooth_copy(model, lambda m: m(x), alpha, fuse=True)
    assert isinstance(fused.query, LinearPart) and fused.query.fused is fused.key.fused is fused.value.fused
    assert [fused.query.part, fused.key.part, fused.value.part] == [0, 1, 2]
    f = fused.query.fused
    assert isinstance(f, FusedLinears) and f.sizes == [8, 8, 12]
    assert torch.equal(f.linear.bias[8:16], torch.zeros(8))  # the key had no bias
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), rtol=1e-4, atol=1e-4)
    if alpha is None:
        assert f.inv_scale is None and type(fused.out) is nn.Linear  # fused, nothing smoothed
        assert torch.equal(f.linear.weight, torch.cat([model.query.weight, model.key.weight, model.value.weight]))
    else:  # one scale for the group: the widest weight column of any member
        w = torch.cat([model.query.weight, model.key.weight, model.value.weight]).detach().abs().amax(0)
        s = x.abs().amax((0, 1)) ** alpha / w ** (1 - alpha)
        assert torch.allclose(f.inv_scale, 1 / s, rtol=1e-5) and isinstance(fused.out, SmoothedLinear)
    assert type(smooth_copy(model, lambda m: m(x), alpha, fuse=False).query) is not LinearPart


def test_fused_parts_serve_each_input_once_in_any_order() -> None:
    """Each part's output for the input it is given, whichever part is called first, however often; a new or
    changed input is computed afresh; nothing is held once every part has been served; copies start empty."""
    model, x = _Attention().eval(), _tokens()
    fused = smooth_copy(model, lambda m: m(x), None, fuse=True)
    f = fused.query.fused
    y = x[0].clone()
    with torch.no_grad():
        ref = [model.query(y), model.key(y), model.value(y)]
        for order in ([0, 1, 2], [2, 0, 1], [1, 1, 0, 2, 2, 0, 1]):
            parts = [(fused.query, fused.key, fused.value)[i] for i in order]
            for i, part in zip(order, parts, strict=True):
                assert torch.allclose(part(y), ref[i], atol=1e-6)
        for part in (fused.query, fused.key, fused.value):
            part(y)
        assert f._served == {}  # every part served: nothing held
        fused.query(y)
        y.mul_(2)  # changed in place after the group computed it: its version counter says so
        assert torch.allclose(fused.key(y), model.key(y), atol=1e-6)
        assert torch.allclose(fused.value(y), model.value(y), atol=1e-6)
        assert len(f._served) == 1 and copy.deepcopy(fused).query.fused._served == {}  # a copy starts empty
        assert torch.allclose(fused.query(y), model.query(y), atol=1e-6)
    assert f._served == {}


def test_int8_copy_fuses_per_row_copies_only_with_the_same_result() -> None:
    """Fused per-row int8 is the unfused copy bit for bit (the same rows, one activation scale for the shared
    input either way); one scale per matrix is never fused (it would become one scale for the group)."""
    model, x = _Attention().eval(), _tokens()
    calibrate = lambda m: m(x)  # noqa: E731
    fused, apart = (
        int8_copy(model, calibrate=calibrate, alpha=None),
        int8_copy(model, calibrate=calibrate, alpha=None, fuse=False),
    )
    assert isinstance(fused.query, LinearPart) and type(apart.query) is not LinearPart
    assert fused.query.fused.linear.weight().qscheme() == torch.per_channel_affine
    with torch.no_grad():
        assert torch.equal(fused(x), apart(x))
        assert torch.equal(fused(x), int8_copy(model)(x))  # no calibrate: nothing fused or smoothed
    assert type(int8_copy(model, per_channel=False, calibrate=calibrate, alpha=None).query) is not LinearPart
    # low_precision: int8-pc and int8-sq fused when given calibrate
    assert isinstance(low_precision(model, "int8-pc", calibrate).query, LinearPart)
    sq = low_precision(model, "int8-sq", calibrate)
    assert isinstance(sq.query, LinearPart) and sq.query.fused.inv_scale is not None


def test_keep_float_never_fuses_a_float_linear_with_an_int8_one() -> None:
    model, x = _Attention().eval(), _tokens()
    q = int8_copy(model, calibrate=lambda m: m(x), keep_float=lambda name: name == "value")
    assert type(q.value) is SmoothedLinear and type(q.value.linear) is nn.Linear  # apart, and in float
    assert isinstance(q.query, LinearPart) and q.query.fused.sizes == [8, 8]  # query and key fused, in int8
    assert q.query.fused.linear.weight().qscheme() == torch.per_channel_affine
    whole = int8_copy(model, calibrate=lambda m: m(x), keep_float=lambda name: name in ("query", "key", "value"))
    assert type(whole.query.fused.linear) is nn.Linear  # the whole group kept in float, by its members' names


def test_fused_parts_keep_each_threads_input_apart() -> None:
    """Two threads through one copy: a part called in one thread never returns what another thread's input made."""
    import threading

    model, x = _Attention().eval(), _tokens()
    fused = smooth_copy(model, lambda m: m(x), None, fuse=True)
    a, b = x[0].clone(), x[1].clone()
    with torch.no_grad():
        fused.query(a)  # this thread: a computed, key and value waiting
        other = threading.Thread(target=lambda: [p(b) for p in (fused.query, fused.key, fused.value)])
        other.start()
        other.join()
        assert torch.allclose(fused.key(a), model.key(a), atol=1e-6)
