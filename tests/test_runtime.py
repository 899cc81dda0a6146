"""onnxruntime copies (kdistill.runtime): the float export answers as the model does, the int8 copies are
quantised (and smoothing cuts their error on outlier channels), copies survive deepcopy, the model passed in is
left alone, a sentence encoder keeps its dynamic batch and length, and bad input gets a clear error."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from kdistill.deploy import measure_many  # noqa: E402
from kdistill.runtime import ONNX_VARIANTS, OnnxRuntimeModel, onnx_copy  # noqa: E402
from tests.helpers import outlier_inputs  # noqa: E402


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).train()


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_float_copy_answers_as_the_model_and_leaves_it_alone(tmp_path: Path) -> None:
    model, x = _mlp(), torch.randn(8, 16)
    ort = onnx_copy(model, "onnx", x[:2], tmp_path, name="mlp")
    with torch.no_grad():
        ref = model.eval()(x)
    assert isinstance(ort, OnnxRuntimeModel) and ort.path == tmp_path / "mlp.onnx" and ort.path.is_file()
    assert list(ort.parameters()) == []  # nothing of the model's is held in torch
    assert torch.allclose(ort(x), ref, atol=1e-5) and ort(x[:1]).shape == (1, 4)  # batch is dynamic
    twin = copy.deepcopy(ort)  # opens its own session on the same file
    assert twin._session is not ort._session and torch.equal(twin(x), ort(x))
    assert all(type(m) is nn.Linear for m in (model[0], model[2]))


def test_int8_copies_are_quantised_and_smoothing_cuts_their_error(tmp_path: Path) -> None:
    model, x = _mlp().eval(), outlier_inputs()
    with torch.no_grad():
        ref = model(x)
    plain = onnx_copy(model, "onnx-int8", x[:2], tmp_path / "plain")
    smooth = onnx_copy(model, "onnx-int8-sq", x[:2], tmp_path / "sq", calibrate=lambda m: m(x))
    for q in (plain, smooth):
        assert q.path.name == f"model.{'onnx-int8' if q is plain else 'onnx-int8-sq'}.onnx"
        assert not _ops(q.path) & {"MatMul", "Gemm"}  # every matrix product quantised
        assert _ops(q.path) & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    err_plain = float((plain(x) - ref).abs().mean())
    err_smooth = float((smooth(x) - ref).abs().mean())
    assert 0.0 < err_smooth < 0.75 * err_plain, (err_smooth, err_plain)  # 0.049 against 0.093 here
    assert model[0].weight.requires_grad and type(model[0]) is nn.Linear  # the smoothing worked on a copy


def test_encoder_copy_keeps_dynamic_batch_and_length(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from kdistill.encoder.models import load_encoder
    from tests.encoder.tiny import make_encoder_dir

    enc, tok, _ = load_encoder(str(make_encoder_dir(tmp_path / "t")))
    enc.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, int(enc.hf.config.vocab_size), (3, 12), generator=g)
    ids[2, 7:] = enc.pad_id  # a padded row: the mask is computed inside the graph, from the ids
    ort = onnx_copy(enc, "onnx", ids[:2, :6], tmp_path / "o", dynamic=(0, 1))
    with torch.no_grad():
        ref = enc(ids)
    assert torch.allclose(ort(ids), ref, atol=1e-5)  # another batch size and length than the export's example
    assert torch.allclose(ort(ids[2:, :7]), ref[2:], atol=1e-5)  # padding never counts
    q = onnx_copy(enc, "onnx-int8", ids[:2, :6], tmp_path / "q", dynamic=(0, 1))
    assert 0.9 < float(nn.functional.cosine_similarity(q(ids), ref).min()) < 1.0


def test_measure_many_times_an_onnxruntime_copy(tmp_path: Path) -> None:
    model = _mlp().eval()
    ort = onnx_copy(model, "onnx", torch.randn(2, 16), tmp_path)
    fig = measure_many({"torch": model, "onnx": ort}, (16,), repeats=2, warmup=1, batch_sizes=[1, 4])
    assert fig["onnx"]["params"] == 0 and fig["torch"]["params"] == 16 * 32 + 32 + 32 * 4 + 4
    assert all(fig[n][f"latency_ms_b{b}"] > 0 for n in fig for b in (1, 4))


def test_bad_variants_and_a_missing_runtime_get_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _mlp(), torch.randn(2, 16)
    assert ONNX_VARIANTS == ("onnx", "onnx-int8", "onnx-int8-sq")
    with pytest.raises(ValueError, match="unknown onnxruntime copy 'onnx-int4'; choose from onnx, onnx-int8"):
        onnx_copy(model, "onnx-int4", x, tmp_path)
    with pytest.raises(ValueError, match="onnx-int8-sq \\(SmoothQuant\\) needs calibrate"):
        onnx_copy(model, "onnx-int8-sq", x, tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[onnx\]'"):
        onnx_copy(model, "onnx", x, tmp_path / "none")
    assert not (tmp_path / "none").exists()  # refused before anything was written
