"""Deploy the student: a run's student as ONNX / safetensors / TorchScript, checked against PyTorch.

``export_run(run_dir)`` writes ``<run_dir>/export/``::

    student.json          what the files hold: model spec, input shape, classes, source run, accuracy
    student.safetensors   the weights (rebuild with ``load_exported(dir)``)
    student.onnx          the forward pass, batch dimension dynamic (input "input", output "logits")
    student.torchscript.pt  (only with format "torchscript")
    verify.json           ONNX Runtime (and TorchScript / safetensors) outputs vs PyTorch's on test images

The files are written into a temporary directory beside the target, which is renamed into place only
when every export and check succeeded: a failed export leaves no partial directory behind, and an
earlier export in the same place stays as it was.

Which student: by default the student (any role but the teacher) with the best **validation**
accuracy, ``val_acc`` in ``summary.json`` — the same rule as every other choice in kdistill, so the
test set stays out of it; ties go to role ``kd``, then to the lowest seed. ``role=`` / ``seed=``
narrow the choice.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from kdistill.config import DataConfig
from kdistill.data import load_data
from kdistill.io import CheckpointError, replace_dir, safe_load
from kdistill.metrics import percent
from kdistill.models import build_model, count_params, load_model_file

EXPORT_FORMAT = "kdistill-export/1"
FORMATS = ("onnx", "safetensors", "torchscript")
DEFAULT_FORMATS = ("onnx", "safetensors")
FILES = {"onnx": "student.onnx", "safetensors": "student.safetensors", "torchscript": "student.torchscript.pt"}
TOLERANCE = 1e-4  # max |logit difference| accepted between PyTorch and an exported file
# Opset 17 is read by every onnxruntime from 1.14 on (the extra asks for >= 1.18) and has every
# operator of the built-in models; newer opsets only narrow which runtimes can load the file.
ONNX_OPSET = 17
# torch >= 2.9 defaults to the torch.export-based exporter (dynamo=True), which needs the onnxscript
# package and, on torch 2.13, takes seconds per model and writes the weights to a second file
# (student.onnx.data). The TorchScript-based exporter (dynamo=False) needs only onnx, takes a tenth
# of a second and writes one self-contained file; it is deprecated but works on torch 2.2-2.13, and
# the parity check below catches any difference in what it produces.
ONNX_EXPORTER = "torch.onnx.export(dynamo=False), the TorchScript-based exporter"
INSTALL_ONNX = "pip install 'kdistill[onnx]'"


class ExportError(ValueError):
    """A run cannot be exported (no finished student, a missing package, an unsupported operator)."""


def _log(msg: str) -> None:
    print(f"[kdistill export] {msg}", flush=True)


# ----------------------------------------------------------------------------- choosing the student


def _summary(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ExportError(
            f"run {run_dir} has no summary.json: the run did not finish (or this is not a run directory); "
            "finish it with `kdistill run CONFIG` first"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"run {run_dir}: summary.json is not valid JSON ({e})") from None


def _val(row: dict) -> float:
    v = row.get("val_acc")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(v) else v


def _model_dir(row: dict) -> str:
    """A student's directory in its run: ``<role>-seed<k>``, or the row's ``dir`` (every row since
    kdistill.experiment.train writes one)."""
    return row.get("dir") or f"{row['role']}-seed{row['seed']}"


def choose_student(run_dir: str | Path, role: str | None = None, seed: int | None = None) -> dict:
    """The ``summary.json`` row of the student to export (see the module docstring for the rule)."""
    run_dir = Path(run_dir)
    rows = _summary(run_dir).get("rows", [])
    students = [r for r in rows if r.get("role") != "teacher" and not r.get("ensemble")]
    finished = [r for r in students if (run_dir / _model_dir(r) / "weights.pt").is_file()]
    if not finished:
        if not students:
            what = "summary.json lists no student (only " + (", ".join(r.get("role", "?") for r in rows) or "no model")
            what += "); the run was teacher-only (roles: [])"
        else:
            missing = ", ".join(f"{_model_dir(r)}/weights.pt" for r in students)
            what = f"summary.json lists students but their weights are missing: {missing}"
        raise ExportError(f"run {run_dir} has no finished student to export: {what}")
    chosen = [r for r in finished if (role is None or r["role"] == role) and (seed is None or r["seed"] == seed)]
    if not chosen:
        want = " and ".join(
            x for x in (f"role {role!r}" if role else "", f"seed {seed}" if seed is not None else "") if x
        )
        have = ", ".join(f"{r['role']} seed {r['seed']}" for r in finished)
        raise ExportError(f"run {run_dir} has no finished student with {want}; it has: {have}")
    return max(chosen, key=lambda r: (_val(r), r["role"] == "kd", -int(r["seed"])))


# ----------------------------------------------------------------------------- the export


def export_run(
    run_dir: str | Path,
    formats: Iterable[str] = DEFAULT_FORMATS,
    out_dir: str | Path | None = None,
    role: str | None = None,
    seed: int | None = None,
    check_images: int = 1000,
    verbose: bool = True,
) -> dict:
    """Export a run's student (see the module docstring) and check each file against PyTorch.

    ``formats``: any of ``onnx``, ``safetensors``, ``torchscript``. ``out_dir`` defaults to
    ``<run_dir>/export`` and is replaced as a whole. The check runs the first ``check_images`` test
    images of the run's dataset (loaded offline, as the run's ``config.yaml`` describes it) through
    PyTorch and each exported file: the largest logit difference must be <= 1e-4 and every argmax
    equal, or nothing is written. When the dataset is not on this machine (or ``check_images=0``),
    64 random inputs are used instead and ``verify.json`` says so.

    Returns ``student.json``'s content plus ``out_dir`` and ``verify`` (``verify.json``'s content).
    """
    run_dir = Path(run_dir)
    fmts = _formats(formats)
    row = choose_student(run_dir, role, seed)
    _need_packages(fmts)
    name = _model_dir(row)
    model, saved = _load_student(run_dir / name / "weights.pt")
    x, inputs, labels = _check_inputs(run_dir, tuple(saved["input_shape"]), check_images)
    if verbose:
        _log(
            f"{run_dir}: exporting {name} ({saved['spec']['arch']}, {count_params(model):,} params, val acc "
            f"{percent(row.get('val_acc'), 'n/a')} %, test acc {percent(row.get('test_acc'), 'n/a')} %) as "
            + ", ".join(fmts)
        )
    manifest = _manifest(
        run_dir, row, model, saved, fmts, chosen="role/seed given" if (role or seed is not None) else ""
    )
    out = Path(out_dir) if out_dir is not None else run_dir / "export"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        verify = _export_and_verify(model, fmts, tmp, manifest, x, inputs, labels, name)
        if verbose:
            for f in fmts:
                _log(f"verify {f}: {_verify_line(verify[f], inputs)}")
        failed = [f for f in fmts if not verify[f]["ok"]]
        if failed:
            raise ExportError(
                f"exported {', '.join(failed)} of {run_dir}/{name} do not match PyTorch on {inputs}: "
                + "; ".join(f"{f}: {_verify_line(verify[f], inputs)}" for f in failed)
                + ". Nothing was written."
            )
        (tmp / "student.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "verify.json").write_text(json.dumps(verify, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        _log(f"wrote {out}/: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return {**manifest, "out_dir": str(out), "verify": verify}


def _manifest(run_dir: Path, row: dict, model: nn.Module, saved: dict, fmts: list[str], chosen: str) -> dict:
    """``student.json``: what the exported files hold, how to feed them, where they come from."""
    shape, num_classes = list(saved["input_shape"]), int(saved["num_classes"])
    name = _model_dir(row)
    weights = run_dir / name / "weights.pt"
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "spec": saved["spec"],
        "input_shape": shape,
        "num_classes": num_classes,
        "class_names": _class_names(run_dir, num_classes),
        "input": {
            "name": "input",
            "shape": ["batch", *shape],
            "dtype": "float32",
            "preprocessing": "as kdistill.data.load_data returns inputs: raw * scale (uint8 pixels / 255), then "
            "standardized per channel (per feature of a vector) with the mean and std of the training inputs",
            # {scale, mean: [per channel], std: [per channel]}: x = (pixel * scale - mean[c]) / std[c]
            "normalize": saved.get("normalize"),
        },
        "output": {"name": "logits", "shape": ["batch", num_classes]},
        "source": {
            "run": str(run_dir.resolve()),
            "role": row["role"],
            "seed": row["seed"],
            "weights": f"{name}/weights.pt",
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "selected_by": chosen or "best val_acc among students",
            "smoke": bool(_summary(run_dir).get("smoke", False)),  # smoke runs: tiny data, numbers meaningless
        },
        "metrics": {k: row.get(k) for k in ("test_acc", "val_acc", "test_errors", "test_nll")},
        "params": count_params(model),
        "files": {f: FILES[f] for f in fmts},
        "torch": torch.__version__,
    }
    if "onnx" in fmts:
        manifest["onnx"] = {
            "opset": ONNX_OPSET,
            "exporter": ONNX_EXPORTER,
            "dynamic_axes": {"input": {"0": "batch"}, "logits": {"0": "batch"}},
        }
    return manifest


def _export_and_verify(
    model: nn.Module,
    fmts: list[str],
    tmp: Path,
    manifest: dict,
    x: torch.Tensor,
    inputs: str,
    labels: torch.Tensor | None,
    name: str,
) -> dict:
    """Write each format into ``tmp`` and compare what it computes on ``x`` with PyTorch: ``verify.json``."""
    with torch.inference_mode():
        reference = model(x)
    verify: dict[str, Any] = {"inputs": inputs, "n": int(x.shape[0]), "tolerance": TOLERANCE}
    verify["torch_acc"] = _acc(reference, labels)
    if "safetensors" in fmts:
        verify["safetensors"] = _export_safetensors(model, tmp / FILES["safetensors"], manifest, x, reference)
    if "onnx" in fmts:
        export_onnx(model, x[:2], tmp / FILES["onnx"], name)
        verify["onnx"] = check_onnx(tmp / FILES["onnx"], x, reference, labels)
    if "torchscript" in fmts:
        verify["torchscript"] = _export_torchscript(model, x, tmp / FILES["torchscript"], reference, labels)
    verify["ok"] = all(verify[f]["ok"] for f in fmts)
    return verify


def _formats(formats: Iterable[str] | str) -> list[str]:
    if isinstance(formats, str):
        formats = [formats]
    out: list[str] = []
    for item in formats:
        for f in str(item).split(","):
            f = f.strip().lower()
            if not f:
                continue
            if f not in FORMATS:
                raise ExportError(f"unknown export format {f!r}; choose from {', '.join(FORMATS)}")
            if f not in out:
                out.append(f)
    if not out:
        raise ExportError(f"no export format given; choose from {', '.join(FORMATS)}")
    return out


def _need_packages(fmts: list[str]) -> None:
    missing = []
    if "onnx" in fmts:
        for mod in ("onnx", "onnxruntime"):
            try:
                __import__(mod)
            except ImportError:
                missing.append(mod)
    if "safetensors" in fmts:
        try:
            import safetensors.torch  # noqa: F401
        except ImportError:
            missing.append("safetensors")
    if missing:
        raise ExportError(
            f"exporting {', '.join(fmts)} needs the package(s) {', '.join(missing)}, which are not installed: "
            f"{INSTALL_ONNX}"
        )


def _load_student(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild the student from its ``weights.pt`` (read with weights_only=True)."""
    try:
        return load_model_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; cannot export it") from None


def _check_inputs(run_dir: Path, shape: tuple[int, ...], n: int) -> tuple[torch.Tensor, str, torch.Tensor | None]:
    """The first ``n`` test images of the run's dataset, or 64 random inputs when they cannot be had."""
    reason = "check_images=0"
    if n > 0:
        try:
            x, y, what = _test_images(run_dir, n)
            if tuple(x.shape[1:]) == shape:
                return x, what, y
            reason = f"test images have shape {tuple(x.shape[1:])}, the model takes {shape}"
        except Exception as e:  # noqa: BLE001 - any failure to get the data only weakens the check
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
    return x, f"64 random inputs (no test images: {reason})", None


def _test_images(run_dir: Path, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    # Only the data section is read (not validated as a whole config), so that runs written by other
    # kdistill versions still export. The test split depends on nothing but the dataset itself.
    saved = yaml.safe_load(path.read_text()) or {}
    data = DataConfig.model_validate(saved.get("data") or {})
    kwargs = {**data.load_kwargs(saved.get("output_dir", "runs")), "download": False, "val_size": 1}
    bundle = load_data(data.name, **kwargs, limit_test=n)
    return bundle.test.x[:], bundle.test.y, f"the first {len(bundle.test)} test images of {bundle.name}"


def _class_names(run_dir: Path, num_classes: int) -> list[str] | None:
    path = run_dir / "teacher" / "predictions.pt"
    try:
        names = safe_load(path).get("class_names")
    except (CheckpointError, AttributeError):
        return None
    return [str(c) for c in names] if names is not None and len(names) == num_classes else None


def _acc(logits: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    if labels is None:
        return None
    return float((torch.as_tensor(logits).argmax(1) == labels).float().mean())


def _compare(out: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> dict:
    out = torch.as_tensor(out).float()
    diff = float((out - reference).abs().max()) if out.shape == reference.shape else math.inf
    mismatches = int((out.argmax(1) != reference.argmax(1)).sum()) if out.shape == reference.shape else -1
    return {
        "max_abs_diff": diff,
        "argmax_mismatches": mismatches,
        "acc": _acc(out, labels),
        "ok": diff <= TOLERANCE and mismatches == 0,
    }


def _verify_line(v: dict, inputs: str) -> str:
    text = f"max |logit diff| {v['max_abs_diff']:.2e} (<= {TOLERANCE:g}: {'yes' if v['ok'] else 'NO'}), "
    text += f"{v['argmax_mismatches']} argmax mismatches on {inputs}"
    if v.get("acc") is not None:
        text += f", acc {100 * v['acc']:.2f} %"
    return text


def _export_safetensors(model: nn.Module, path: Path, manifest: dict, x: torch.Tensor, reference: torch.Tensor) -> dict:
    from safetensors.torch import save_model

    # save_model (not save_file) de-duplicates tied weights, which save_file refuses.
    save_model(
        model,
        str(path),
        metadata={"format": EXPORT_FORMAT, "spec": json.dumps(manifest["spec"])},
        force_contiguous=True,
    )
    reloaded = _rebuild(manifest, path)
    with torch.inference_mode():
        out = reloaded(x)
    return _compare(out, reference, None)


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, name: str, dynamic: tuple[int, ...] = (0,)
) -> None:
    """Write ``model`` as ONNX (input ``input``, output ``logits``) and run onnx's checker; ``dynamic`` are the
    input axes that may change size (the batch; a sequence model adds its tokens)."""
    axes = {i: "batch" if i == 0 else f"dim{i}" for i in dynamic}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation notice (see ONNX_EXPORTER)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": axes, "logits": {0: "batch"}},
            )
        import onnx

        onnx.checker.check_model(str(path))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all are reported the same way
        raise ExportError(_onnx_failure(e, name)) from e


def _onnx_failure(e: BaseException, name: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    op = re.search(r"\b((?:aten|prim|onnx|quantized|torchvision)(?:::|\.)[A-Za-z_][\w.]*)", text)
    if op:
        return (
            f"ONNX export of {name} failed at operator {op.group(1)}: {first}. Replace that operator in the "
            "model, or export without ONNX (--format safetensors)."
        )
    return f"ONNX export of {name} failed: {type(e).__name__}: {first}"


def onnx_session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime session on the CPU for the file ``path``, ``threads`` threads within an operator and one
    across them (onnxruntime's default graph optimisations, all of them)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(path: Path, x: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Run the file in onnxruntime (1 thread) on ``x`` and on its first row alone; compare with ``reference``."""
    import onnxruntime as ort

    session = onnx_session(path)
    out = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
    result = _compare(out, reference, labels)
    # The batch dimension is dynamic: one image alone must give the same logits as in the batch.
    single = torch.from_numpy(session.run(["logits"], {"input": x[:1].numpy()})[0])
    one = _compare(single, reference[:1], None)
    result.update(
        batch_sizes=[int(x.shape[0]), 1],
        max_abs_diff=max(result["max_abs_diff"], one["max_abs_diff"]),
        ok=result["ok"] and one["ok"],
        runtime=f"onnxruntime {ort.__version__}",
    )
    return result


def _export_torchscript(
    model: nn.Module, x: torch.Tensor, path: Path, reference: torch.Tensor, labels: torch.Tensor | None
) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
            traced = torch.jit.trace(model, x[:2])
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"TorchScript export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    with torch.inference_mode():
        out = loaded(x)
    return _compare(out, reference, labels)


# ----------------------------------------------------------------------------- loading an export


def _rebuild(manifest: dict, weights: Path) -> nn.Module:
    from safetensors.torch import load_model

    model = build_model(
        manifest["spec"]["arch"], manifest["input_shape"], manifest["num_classes"], manifest["spec"].get("kwargs")
    )
    load_model(model, str(weights), strict=True)
    return model.eval()


def load_exported(path: str | Path) -> nn.Module:
    """The exported student as a PyTorch module in eval mode, from ``student.json`` + ``student.safetensors``.

    ``path`` is the export directory (or its ``student.json``). The model is rebuilt from its spec, so
    a user architecture (``package.module:factory``) must be importable here too.
    """
    path = Path(path)
    folder = path.parent if path.suffix == ".json" else path
    manifest_path = folder / "student.json"
    if not manifest_path.is_file():
        raise ExportError(f"{folder} is not a kdistill export (no student.json); make one with `kdistill export RUN`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{manifest_path}: format {manifest.get('format')!r}, expected {EXPORT_FORMAT!r}")
    weights = folder / FILES["safetensors"]
    if not weights.is_file():
        raise ExportError(f"{folder} has no {weights.name}: export with --format safetensors to load it in PyTorch")
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise ExportError("loading an export needs the safetensors package: pip install safetensors") from None
    return _rebuild(manifest, weights)
