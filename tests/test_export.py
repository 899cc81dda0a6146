"""Exporting a run's student: ONNX and safetensors that match PyTorch, clear errors, nothing partial."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdistill.cli import main
from kdistill.config import load_config
from kdistill.experiment.run import run_experiment
from kdistill.export import ExportError, choose_student, export_onnx, export_run, load_exported
from kdistill.io import CheckpointError, safe_load
from kdistill.models import build_model

try:
    import onnxruntime as ort
except ImportError:  # only the ONNX tests skip: safetensors, TorchScript and pickle refusal need no onnxruntime
    ort = None
needs_ort = pytest.mark.skipif(ort is None, reason="onnxruntime not installed (pip install -e '.[onnx]')")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished smoke run on synthetic data: teacher, scratch and kd students of one seed."""
    out = tmp_path_factory.mktemp("runs")
    overrides = [
        "data.name=synthetic",
        "data.val_size=60",
        "data.synthetic={n_train: 300, n_test: 200, num_classes: 4, side: 8}",
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [16]}",
        "student.model.arch=mlp",
        "student.model.kwargs={hidden: [8]}",
        "teacher.train.epochs=1",
        "student.train.epochs=1",
        "roles=[scratch,kd]",
        "seeds=[0]",
        "threads=1",
        f"output_dir={out}",
        "name=syn",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("kdistill.experiment.run.build_report", lambda run_dir: run_dir / "report.html")  # figures: slow
        run_experiment(load_config(None, overrides), smoke=True)
    torch.set_num_threads(1)
    return out / "syn-smoke"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("export"))
    return dst


def _student(run_dir: Path, role: str, seed: int) -> nn.Module:
    obj = safe_load(run_dir / f"{role}-seed{seed}" / "weights.pt")
    model = build_model(obj["spec"]["arch"], obj["input_shape"], obj["num_classes"], obj["spec"]["kwargs"])
    model.load_state_dict(obj["state_dict"])
    return model.eval()


@needs_ort
def test_export_onnx_and_safetensors_match_pytorch(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path)
    res = export_run(run)
    out = run / "export"
    assert sorted(p.name for p in out.iterdir()) == [
        "student.json",
        "student.onnx",
        "student.safetensors",
        "verify.json",
    ]
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    summary = json.loads((run / "summary.json").read_text())
    students = [r for r in summary["rows"] if r["role"] != "teacher"]
    best = max(students, key=lambda r: (r["val_acc"], r["role"] == "kd"))
    assert (res["source"]["role"], res["source"]["seed"]) == (best["role"], best["seed"])

    manifest = json.loads((out / "student.json").read_text())
    assert manifest["class_names"] == ["class0", "class1", "class2", "class3"]
    assert manifest["input_shape"] == [1, 8, 8] and manifest["num_classes"] == 4
    assert manifest["metrics"]["test_acc"] == best["test_acc"]
    norm = manifest["input"]["normalize"]  # what a deployment needs to turn raw pixels into inputs
    assert norm["scale"] == pytest.approx(1 / 255)  # per channel: one grey channel here
    assert len(norm["mean"]) == len(norm["std"]) == 1 and 0 < norm["mean"][0] < 1 and norm["std"][0] > 0
    verify = json.loads((out / "verify.json").read_text())
    assert verify["ok"] and verify["n"] == 200 and "test images of synthetic" in verify["inputs"]
    assert verify["onnx"]["max_abs_diff"] <= 1e-4 and verify["onnx"]["argmax_mismatches"] == 0
    # All 200 test images were checked: the run's own test accuracy is reproduced by the ONNX file.
    assert verify["onnx"]["acc"] == pytest.approx(best["test_acc"])

    # Independently of verify.json: ONNX Runtime on a batch size never seen in export, and safetensors.
    ref = _student(run, best["role"], best["seed"])
    x = torch.randn(3, 1, 8, 8)
    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = ref(x)
        np.testing.assert_allclose(onnx_out, expected.numpy(), atol=1e-4, rtol=0)
        assert torch.equal(load_exported(out)(x), expected)


def test_export_role_seed_torchscript_and_out_dir(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "deploy" / "kd"
    res = export_run(run_dir, formats=["torchscript,safetensors"], out_dir=out, role="kd", seed=0, verbose=False)
    assert res["source"]["role"] == "kd" and res["source"]["selected_by"] == "role/seed given"
    assert sorted(p.name for p in out.iterdir()) == [
        "student.json",
        "student.safetensors",
        "student.torchscript.pt",
        "verify.json",
    ]
    assert res["verify"]["torchscript"]["ok"] and "onnx" not in res["verify"]
    x = torch.randn(5, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated from torch 2.9 on
        scripted = torch.jit.load(str(out / "student.torchscript.pt"))
    with torch.no_grad():
        assert torch.allclose(scripted(x), _student(run_dir, "kd", 0)(x), atol=1e-6)
    # A second export replaces the first as a whole.
    export_run(run_dir, formats=["safetensors"], out_dir=out, role="kd", verbose=False)
    assert sorted(p.name for p in out.iterdir()) == ["student.json", "student.safetensors", "verify.json"]
    assert [p.name for p in out.parent.iterdir()] == ["kd"]


@needs_ort
def test_failed_onnx_export_names_operator_and_leaves_nothing(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy(run_dir, tmp_path)
    export_run(run, formats=["safetensors"], verbose=False)
    before = {p.name: p.read_bytes() for p in (run / "export").iterdir()}
    entries = sorted(p.name for p in run.iterdir())

    def broken(*args: object, **kwargs: object) -> None:
        Path(args[2]).write_bytes(b"half an onnx file")
        raise torch.onnx.errors.OnnxExporterError(
            "Exporting the operator 'aten::linalg_svd' to ONNX opset version 17 is not supported"
        )

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ExportError, match=r"operator aten::linalg_svd"):
        export_run(run, verbose=False)
    assert sorted(p.name for p in run.iterdir()) == entries  # no temporary folder left
    assert {p.name: p.read_bytes() for p in (run / "export").iterdir()} == before  # the earlier export is intact
    fresh = tmp_path / "fresh"
    with pytest.raises(ExportError):
        export_run(run, out_dir=fresh, verbose=False)
    assert not fresh.exists() and list(tmp_path.iterdir()) == [run]


@needs_ort
def test_real_unsupported_operator_is_named(tmp_path: Path) -> None:
    class SVD(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svdvals(x.view(x.shape[0], 2, 2))

    with pytest.raises(ExportError, match=r"failed at operator aten::linalg_svd"):
        export_onnx(SVD(), torch.randn(2, 4), tmp_path / "m.onnx", "kd-seed0")


@needs_ort
def test_onnx_that_differs_from_pytorch_is_refused(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = torch.onnx.export

    def perturbed(model: nn.Module, *args: object, **kwargs: object) -> object:
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.classifier.bias.add_(0.01)  # a small but real difference in every logit
        return real_export(other, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", perturbed)
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="do not match PyTorch") as info:
        export_run(run_dir, out_dir=out, verbose=False)
    assert "max |logit diff| 1.00e-02" in str(info.value) and "Nothing was written" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_errors_name_the_run_and_what_is_missing(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        export_run(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match=f"run {empty} has no summary.json"):
        export_run(empty)
    assert list(empty.iterdir()) == []

    run = _copy(run_dir, tmp_path)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_run(run, formats=["onnx,tflite"])
    with pytest.raises(ExportError, match="no finished student with role 'label_smoothing'.*kd seed 0"):
        export_run(run, role="label_smoothing")
    for d in ("scratch-seed0", "kd-seed0"):
        (run / d / "weights.pt").unlink()
    with pytest.raises(ExportError, match="weights are missing: scratch-seed0/weights.pt, kd-seed0/weights.pt"):
        export_run(run)
    summary = json.loads((run / "summary.json").read_text())
    summary["rows"] = summary["rows"][:1]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ExportError, match=f"run {run} has no finished student.*teacher-only"):
        export_run(run)
    assert not (run / "export").exists()


def test_choose_student_prefers_validation_then_kd(tmp_path: Path) -> None:
    rows = [
        {"role": "teacher", "seed": 0, "val_acc": 0.99, "test_acc": 0.99},
        {"role": "scratch", "seed": 0, "val_acc": 0.80, "test_acc": 0.95},  # best on test: not the rule
        {"role": "kd", "seed": 0, "val_acc": 0.85, "test_acc": 0.80},
        {"role": "label_smoothing", "seed": 1, "val_acc": 0.85, "test_acc": 0.81},
        {"role": "kd", "seed": 1, "val_acc": 0.85, "test_acc": 0.79},
        {"role": "scratch", "seed": 1, "val_acc": 0.97, "test_acc": 0.97},  # no weights: unfinished
    ]
    (tmp_path / "summary.json").write_text(json.dumps({"rows": rows}))
    for r in rows[1:5]:
        (tmp_path / f"{r['role']}-seed{r['seed']}").mkdir()
        (tmp_path / f"{r['role']}-seed{r['seed']}" / "weights.pt").write_bytes(b"")
    assert (lambda r: (r["role"], r["seed"]))(choose_student(tmp_path)) == ("kd", 0)
    assert choose_student(tmp_path, seed=1)["role"] == "kd"
    assert choose_student(tmp_path, role="scratch")["seed"] == 0


def test_export_refuses_pickled_code_in_weights(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path)
    for d in ("scratch-seed0", "kd-seed0"):
        obj = torch.load(run / d / "weights.pt", weights_only=True)
        obj["meta"]["payload"] = Payload()
        torch.save(obj, run / d / "weights.pt")
    with pytest.raises(CheckpointError, match=r"test_export\.Payload"):
        export_run(run, formats=["safetensors"], verbose=False)
    assert not (run / "export").exists()


class Payload:
    """Unpickling this would run code named by the file."""


def test_missing_onnx_packages_say_what_to_install(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(ExportError, match=r"onnxruntime.*pip install 'kdistill\[onnx\]'"):
        export_run(run_dir, out_dir=tmp_path / "x", verbose=False)
    assert list(tmp_path.iterdir()) == []
    export_run(run_dir, formats=["safetensors"], out_dir=tmp_path / "x", verbose=False)  # needs no onnx


@needs_ort
def test_without_test_images_random_inputs_are_used(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path)
    (run / "config.yaml").unlink()
    res = export_run(run, formats=["onnx"], verbose=False)
    assert res["verify"]["ok"] and res["verify"]["n"] == 64
    assert res["verify"]["inputs"].startswith("64 random inputs (no test images: FileNotFoundError")


@needs_ort
def test_cli_export(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["export", str(run_dir), "--format", "onnx", "--format", "safetensors", "--out", str(out)]) == 0
    assert "verify onnx: max |logit diff|" in capsys.readouterr().out
    assert (out / "student.onnx").is_file() and (out / "student.safetensors").is_file()
    assert main(["export", str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "png", "--out", str(out)]) == 2
    assert "unknown export format 'png'" in capsys.readouterr().err
