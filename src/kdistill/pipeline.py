"""The experiment: teacher (trained, reused or loaded), then scratch / KD / label-smoothing students.

``run_experiment(cfg)`` writes ``<output_dir>/<name>/``::

    config.yaml                     resolved config (every default filled in)
    teacher/                        metrics.jsonl, metrics.csv, weights.pt (when trained here)
    <role>-seed<k>/                 metrics.jsonl, metrics.csv, best.pt, last.pt, weights.pt
    summary.json, summary.md        one row per trained model + mean/std per role
    curves.png                      validation accuracy and training loss per epoch
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from kdistill import dist
from kdistill.adapters import AdapterError
from kdistill.config import ConfigError, ExperimentConfig, config_diff
from kdistill.data import BatchLoader, DataBundle, load_data
from kdistill.deploy import measure_many, verdict
from kdistill.distiller import Distiller, FrozenTeacher, LogitCache, Supervised, bf16_supported
from kdistill.io import CheckpointError, atomic_save, atomic_write_text, safe_load
from kdistill.models import build_model, count_params, load_state_strict
from kdistill.page import build_report
from kdistill.report import write_summary
from kdistill.taps import LayerError, probe_shapes
from kdistill.terms import LOGITS, Term, TermContext, TermError, build_term, get_method, layer_pairs
from kdistill.trainer import fit, predict, score
from kdistill.transfer import class_accuracy, label_free_shift, shift_logits
from kdistill.views import CacheError, ViewCache, cache_key, is_augmented
from kdistill.why import expected_calibration_error

MODEL_FORMAT = "kdistill-model/1"
SMOKE = {"limit_train": 800, "limit_test": 500, "val_size": 200, "epochs": 1, "labelled": 200}


def log(msg: str) -> None:
    if dist.is_main():  # one voice per distributed run
        print(f"[kdistill {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def smoke_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same pipeline on a few hundred samples for one epoch, in its own run directory."""
    c = cfg.model_copy(deep=True)
    c.name = cfg.name + "-smoke"
    for tc in c.train_configs():
        tc.epochs, tc.steps = SMOKE["epochs"], None
    c.data.val_size = min(c.data.val_size, SMOKE["val_size"])
    if c.data.labelled is not None:
        c.data.labelled = min(c.data.labelled, SMOKE["labelled"])
    return c


def save_model(model: nn.Module, spec: dict, data: DataBundle, path: Path, **meta: Any) -> None:
    """Weights plus the spec that rebuilds the model: a file that is loadable on its own (rank 0 writes)."""
    if not dist.is_main():
        return
    atomic_save(
        {
            "format": MODEL_FORMAT,
            "spec": spec,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "normalize": data.extra.get("normalize"),
            "state_dict": model.state_dict(),
            "meta": meta,
        },
        path,
    )


def load_weights_into(model: nn.Module, path: Path) -> dict:
    """Load a kdistill model file or a bare ``state_dict`` into ``model``; returns the file's meta."""
    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        load_state_strict(model, obj["state_dict"], str(path))
        return dict(obj.get("meta", {}))
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        load_state_strict(model, obj["state_dict"], str(path))
        return {}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        load_state_strict(model, obj, str(path))
        return {}
    raise CheckpointError(f"{path}: neither a kdistill model file nor a state_dict")


@dataclass
class TeacherInfo:
    model: nn.Module
    source: str  # "checkpoint", "reused" or "trained"
    path: Path
    train_seconds: float


def get_teacher(
    cfg: ExperimentConfig,
    data: DataBundle,
    run_dir: Path,
    smoke: bool,
    device: torch.device | None = None,
    resume: bool = False,
    out: str = "teacher",
) -> TeacherInfo:
    """``cfg.teacher`` loaded from its checkpoint, reused from the teacher cache, or trained (into
    ``run_dir/<out>``) and cached; ``out`` names the directory of another teacher (kdistill.modes)."""
    spec = cfg.teacher.model.model_dump()
    torch.manual_seed(cfg.seeds[0])
    model = build_model(spec["arch"], data.input_shape, data.num_classes, spec["kwargs"])
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        if not path.is_file():
            raise CheckpointError(
                f"teacher.checkpoint: {path} not found (looked relative to {Path.cwd()}). Train a teacher with "
                "`kdistill run configs/fashion_mnist/teacher.yaml` and copy its teacher/weights.pt there, or set "
                "teacher.checkpoint=null to train (and cache) one in this run."
            )
        meta = load_weights_into(model, path)
        log(f"teacher: loaded {path}")
        return TeacherInfo(model, "checkpoint", path, float(meta.get("train_seconds", 0.0)))

    cache_root = Path(cfg.teacher_cache_dir or Path(cfg.output_dir) / "_teachers")
    key = cfg.teacher_key() + ("-smoke" if smoke else "")
    path = cache_root / key / "teacher.pt"
    if path.is_file():
        meta = load_weights_into(model, path)
        if meta.get("data_fingerprint") == data.fingerprint:
            log(f"teacher: reusing {path} (same teacher config and data; delete it to retrain)")
            return TeacherInfo(model, "reused", path, float(meta.get("train_seconds", 0.0)))
        log(f"teacher: {path} was trained on other data; retraining")
        torch.manual_seed(cfg.seeds[0])
        model = build_model(spec["arch"], data.input_shape, data.num_classes, spec["kwargs"])

    log(f"teacher: training {spec['arch']} ({count_params(model):,} params) for {cfg.teacher.train.epochs} epochs")
    res = fit(Supervised(model), data.train, data.val, cfg.teacher.train, seed=cfg.seeds[0],
              out_dir=run_dir / out, desc=out, device=device, resume=resume)  # fmt: skip
    save_model(model, spec, data, path, data_fingerprint=data.fingerprint, train_seconds=res.train_seconds,
               teacher_key=key, best_epoch=res.best_epoch)  # fmt: skip
    if dist.is_main():
        atomic_write_text(path.parent / "config.yaml", cfg.to_yaml())
        # The run directory gets its own copy, so that `checkpoints/` can be refreshed from any run.
        shutil.copyfile(path, run_dir / out / "weights.pt")
    dist.barrier()
    return TeacherInfo(model, "trained", path, res.train_seconds)


def run_experiment(cfg: ExperimentConfig, smoke: bool = False, resume: bool = False) -> dict:
    """Train/load the teacher and every (role, seed) student; write the run directory; return summary.

    ``resume=True`` continues an interrupted run of the same config: finished students are kept (their
    ``row.json``), an unfinished one continues from its ``last.pt`` exactly where it stopped. Under
    ``torchrun`` every rank runs this function; rank 0 alone writes files and returns the summary.
    """
    if smoke:
        cfg = smoke_config(cfg)
    device = dist.resolve_device(cfg.device)
    dist.setup(device)
    dist.check_same(cfg.to_yaml(), "resolved config")
    # Under torchrun the processes of one machine share its cores.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local))
    run_dir = Path(cfg.output_dir) / cfg.name
    if resume:
        check_resumable(run_dir, cfg)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        if not resume:  # a fresh start: no earlier run's finished students or checkpoints count
            for old in [*run_dir.glob("*/row.json"), *run_dir.glob("*/last.pt")]:
                old.unlink()
    dist.barrier()

    data = load_data(
        cfg.data.name, root=cfg.data.root, download=cfg.data.download, val_size=cfg.data.val_size,
        labelled=cfg.data.labelled, transfer=cfg.kd.transfer, split_seed=cfg.data.split_seed,
        limit_train=SMOKE["limit_train"] if smoke else None, limit_test=SMOKE["limit_test"] if smoke else None,
        synthetic=cfg.data.synthetic, exclude_classes=cfg.kd.exclude_classes,
    )  # fmt: skip
    log(
        f"data: {data.name} train {len(data.train)}, val {len(data.val)}, test {len(data.test)}; student labels "
        f"{len(data.student_labelled)}, KD transfer set {len(data.transfer_set)}"
    )
    if dist.world() > 1:
        dist.check_same(data.fingerprint, "data")
        log(f"distributed: {dist.world()} processes, {device.type}, global batch {cfg.student.train.batch_size}")
    from kdistill import modes  # roles dml, born_again, multi_teacher, ta_chain (the module imports this one)

    modes.check_modes(cfg, data)  # their models built and probed: bad specs fail before any training
    t = get_teacher(cfg, data, run_dir, smoke, device, resume)
    t.model.to(device)
    teacher = FrozenTeacher(t.model, fast=cfg.kd.teacher_precision == "auto")
    rows: list[dict] = []
    # Predictions are kept so that reports (soft targets, dark knowledge, calibration) are drawn from
    # files, never recomputed from logs: the teacher's on validation and test, each student's on test.
    t_test, t_val = predict(t.model, data.test), predict(t.model, data.val)
    te = score(t_test, data.test.y)
    # One test image per class (the first of each) for the soft-target figure of the report.
    firsts = [int((data.test.y == c).nonzero()[0]) for c in range(data.num_classes) if bool((data.test.y == c).any())]
    if dist.is_main():
        atomic_save({"test_logits": t_test, "val_logits": t_val, "test_labels": data.test.y,
                     "val_labels": data.val.y, "class_names": data.class_names, "sample_rows": torch.tensor(firsts),
                     "sample_images": data.test.x[firsts]}, run_dir / "teacher" / "predictions.pt")  # fmt: skip
    rows.append(_row("teacher", cfg.seeds[0], t.model, cfg.teacher.model.arch, te, t.train_seconds, source=t.source,
                     weights=str(t.path), val_acc=score(t_val, data.val.y).acc,
                     test_ece=expected_calibration_error(t_test.softmax(1), data.test.y)))  # fmt: skip
    log(f"teacher: test acc {te.acc:.4f} ({te.errors} errors)")

    cache = teacher_cache(cfg, teacher, data, device) if "kd" in cfg.roles else None
    mode_ctx = modes.ModeContext(cfg, data, run_dir, smoke, device, resume, t, teacher, t_test, t_val)

    spec = cfg.student.model.model_dump()
    for seed in cfg.seeds:
        for role in cfg.roles:
            if role in modes.MODE_ROLES:
                rows += modes.run_mode(role, seed, mode_ctx)
                continue
            out = run_dir / f"{role}-seed{seed}"
            if resume and (out / "row.json").is_file():
                rows.append(json.loads((out / "row.json").read_text()))
                log(f"{role} seed {seed}: finished before the interruption, kept")
                continue
            torch.manual_seed(seed)
            student = build_model(spec["arch"], data.input_shape, data.num_classes, spec["kwargs"]).to(device)
            extra: dict[str, Any] = {}
            if role == "kd":
                terms = make_terms(cfg, student, t.model, data)
                objective: nn.Module = Distiller(
                    student, teacher, T=cfg.kd.T, alpha=cfg.kd.alpha, cache=cache, terms=terms
                )
                extra["extra_params"] = objective.extra_params()
                train_split = data.transfer_set
            else:
                smoothing = cfg.label_smoothing.smoothing if role == "label_smoothing" else 0.0
                objective = Supervised(student, smoothing=smoothing)
                train_split = data.student_labelled
            res = fit(objective, train_split, data.val, cfg.student.train, seed=seed, out_dir=out,
                      desc=f"{role} s{seed}", device=device, resume=resume)  # fmt: skip
            save_model(student, spec, data, out / "weights.pt", role=role, seed=seed, best_epoch=res.best_epoch)
            test_logits = predict(student, data.test)
            s_val = predict(student, data.val) if data.excluded_classes else None  # read by the left-out report
            ev, metrics = student_metrics(test_logits, s_val, t_val, data, cfg.kd.bias_shift)
            extra.update(metrics)
            row = _row(role, seed, student, spec["arch"], ev, res.train_seconds, best_epoch=res.best_epoch,
                       val_acc=res.best_val_acc, steps=res.steps, **extra)  # fmt: skip
            rows.append(row)
            if dist.is_main():
                atomic_save({"test_logits": test_logits}, out / "predictions.pt")
                atomic_write_text(out / "row.json", json.dumps(row))  # written last: marks the student finished
            log(f"{role} seed {seed}: test acc {ev.acc:.4f} ({ev.errors} errors), {res.train_seconds:.0f}s")

    summary: dict = {}
    if dist.is_main():
        deploy = deploy_figures(cfg, t.model, data, rows, smoke)
        summary = write_summary(run_dir, cfg, rows, smoke=smoke, deploy=deploy)
        log(f"report: {build_report(run_dir)}")
    dist.barrier()
    return summary


def deploy_figures(cfg: ExperimentConfig, teacher: nn.Module, data: DataBundle, rows: list[dict],
                   smoke: bool) -> dict:  # fmt: skip
    """Parameters, FLOPs, weights size and CPU latency of teacher and student, timed in one process
    (interleaved, one thread), plus a one-line verdict per student role against the teacher."""
    spec = cfg.student.model
    student = build_model(spec.arch, data.input_shape, data.num_classes, spec.kwargs)  # same arch as every student
    figs = measure_many({"teacher": teacher, "student": student}, data.input_shape, threads=1,
                        repeats=3 if smoke else 20, warmup=1 if smoke else 5)  # fmt: skip
    acc = {role: [r["test_acc"] for r in rows if r["role"] == role and r.get("headline", True)] for role in cfg.roles}
    t_acc = next(r["test_acc"] for r in rows if r["role"] == "teacher")
    verdicts = {role: verdict(figs["teacher"], figs["student"], t_acc, sum(a) / len(a)) for role, a in acc.items() if a}
    log(f"deploy: student vs teacher, {'; '.join(f'{r}: {v}' for r, v in verdicts.items())}")
    return {**figs, "verdicts": verdicts}


# Keys that change how fast a run goes, not what it computes: a run may be resumed with others.
RESUME_MAY_DIFFER = ("threads", "device")


def check_resumable(run_dir: Path, cfg: ExperimentConfig) -> None:
    """``--resume`` needs a run directory of the same config that holds something to continue."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise CheckpointError(f"--resume: {run_dir} holds no run to resume (no config.yaml); start it without --resume")
    diff = config_diff(yaml.safe_load(saved.read_text()) or {}, cfg.model_dump(mode="json"),
                       f"in {saved}", ignore=RESUME_MAY_DIFFER)  # fmt: skip
    if diff:
        raise CheckpointError(
            f"--resume: {run_dir} was started with another config: "
            + "; ".join(diff)
            + ". Resume with the same config and overrides, or start a new run (e.g. another name=...)."
        )
    if not any(run_dir.glob("*/last.pt")) and not any(run_dir.glob("*/row.json")):
        raise CheckpointError(f"--resume: {run_dir} has no checkpoint (no */last.pt) and no finished student; "
                              "nothing to continue, so run it without --resume")  # fmt: skip


def teacher_cache(cfg: ExperimentConfig, teacher: FrozenTeacher, data: DataBundle, device: torch.device) -> Any:
    """The kd student's teacher outputs, computed once, or ``None`` when the teacher must run online.

    Without augmentation: one row of logits (and tapped layers) per transfer image, built by rank 0 and
    shared with the other ranks. With augmentation: a :class:`ViewCache` of ``kd.cache.views`` fixed
    views per image on disk, keyed by teacher, data and augmentation, reused by later runs.
    """
    cc = cfg.kd.cache
    if cc.mode == "online":
        log("teacher: online (runs on every training batch)")
        return None
    ts, layers = data.transfer_set, _teacher_layers(cfg)
    aug = cfg.student.train.augment
    if not is_augmented(aug):
        t0 = time.perf_counter()
        cache = LogitCache.build(teacher, BatchLoader(ts, 500), layers) if dist.is_main() else None
        cache = dist.broadcast_object(cache)
        what = "logits" + (f" and layers {', '.join(layers)}" if layers else "")
        log(f"teacher {what} cached for {len(ts)} transfer images in {time.perf_counter() - t0:.1f}s "
            f"({cache.nbytes() / 2**20:.0f} MiB)")  # fmt: skip
        return cache
    if layers:
        log(f"teacher: online, since terms read teacher layers {layers} and a view cache holds logits only")
        return None
    precision = "bf16" if teacher.fast and bf16_supported(device) else "float32"
    key = cache_key(teacher.model, ts.x, ts.index, aug, cc.views, cfg.data.split_seed, cc.topk, cfg.kd.T, precision)
    path = Path(cc.dir or Path(cfg.output_dir) / "_teacher_cache") / key
    if dist.is_main():
        try:
            cache = ViewCache.open(path, key)
            log(f"teacher: reusing view cache {path} ({len(cache)} images x {cache.views} views)")
        except CacheError as e:
            if (path / "meta.json").exists():
                log(f"teacher: {e}; rebuilding it")
            t0 = time.perf_counter()
            cache = ViewCache.build(teacher, ts, aug, cc.views, cfg.data.split_seed, path, key,
                                    topk=cc.topk, T=cfg.kd.T, device=device)  # fmt: skip
            log(f"teacher: {cc.views} augmented views of {len(ts)} transfer images cached ({precision}) in "
                f"{time.perf_counter() - t0:.1f}s ({cache.nbytes() / 2**20:.1f} MiB, {path})")  # fmt: skip
    dist.barrier()
    return cache if dist.is_main() else ViewCache.open(path, key, verify=False)


def student_metrics(
    test_logits: torch.Tensor,
    val_logits: torch.Tensor | None,
    t_val: torch.Tensor,
    data: DataBundle,
    bias_shift: float | None,
) -> tuple[Any, dict]:
    """Test score, calibration and (when classes were left out) the left-out report of a student's, or an
    ensemble's, predictions; ``val_logits`` are only read by the left-out report's label-free shift."""
    ev = score(test_logits, data.test.y)
    extra: dict[str, Any] = {"test_ece": expected_calibration_error(test_logits.softmax(1), data.test.y)}
    if data.excluded_classes:
        assert val_logits is not None, "the left-out report needs the student's validation predictions"
        extra.update(left_out_report(test_logits, val_logits, t_val, data, bias_shift))
    return ev, extra


def left_out_report(
    test_logits: torch.Tensor, s_val: torch.Tensor, t_val: torch.Tensor, data: DataBundle, fixed: float | None
) -> dict:
    """Accuracy on the left-out classes and overall, raw and with their logits' bias corrected.

    ``test_logits``: the student's on the test set; ``s_val`` / ``t_val``: student's and teacher's on the
    validation images, from which the label-free shift is estimated (their labels are not read); test
    labels are only used to score, as for every other number in the summary.
    """
    classes = data.excluded_classes
    shifts = [label_free_shift(s_val, t_val, c) for c in classes]
    out: dict[str, Any] = {"left_out": classes, "left_out_acc": class_accuracy(test_logits, data.test.y, classes),
                           "label_free_shift": [round(b, 3) for b in shifts]}  # fmt: skip
    variants = {"label_free": shifts} | ({"fixed_shift": [fixed] * len(classes)} if fixed is not None else {})
    for name, shift in variants.items():
        corrected = shift_logits(test_logits, classes, shift)
        out[f"{name}_test_acc"] = float((corrected.argmax(1) == data.test.y).float().mean())
        out[f"{name}_left_out_acc"] = class_accuracy(corrected, data.test.y, classes)
    return out


def _teacher_layers(cfg: ExperimentConfig) -> list[str]:
    """Teacher layers that the config's active terms read (cached alongside the logits)."""
    names = {t for tc in cfg.terms if tc.weight > 0 for _, t in layer_pairs(tc.method, tc.layers)}
    return sorted(names - {LOGITS})


def make_terms(cfg: ExperimentConfig, student: nn.Module, teacher: nn.Module, data: DataBundle) -> list[Term]:
    """Build the config's extra terms for this student, sized by one probe forward of each model.

    Every problem (unknown layer, shapes no adapter can match, a method that needs what the data
    lacks) is reported here, before any training, as a :class:`ConfigError` naming ``terms[i]``.
    """
    terms: list[Term] = []
    transfer = data.transfer_set
    n_data = int(transfer.index.max()) + 1
    for i, tc in enumerate(cfg.terms):
        if tc.weight == 0:
            continue  # switched off: not built, not computed
        where = f"terms[{i}] ({tc.method})"
        cls = get_method(tc.method)
        unlabelled = int((transfer.y < 0).sum())
        if cls.needs_labels and unlabelled:
            raise ConfigError(
                f"{where} reads every sample's label, but the KD transfer set has {unlabelled} unlabelled images "
                "(kd.transfer=all); use kd.transfer=labelled or a method that needs no labels"
            )
        pairs = layer_pairs(tc.method, tc.layers)
        try:
            s_shapes = _shapes(student, [s for s, _ in pairs], data)
            t_shapes = _shapes(teacher, [t for _, t in pairs], data)
            for s_layer, t_layer in pairs:
                ctx = TermContext(s_layer, t_layer, s_shapes[s_layer], t_shapes[t_layer], data.num_classes,
                                  n_data, cfg.kd.T, tc.pool)  # fmt: skip
                terms.append(build_term(tc.method, ctx, tc.options, tc.weight, tc.warmup_epochs))
        except (LayerError, AdapterError, TermError) as e:
            raise ConfigError(f"{where}: {e}") from None
    return terms


def _shapes(model: nn.Module, layers: list[str], data: DataBundle) -> dict[str, tuple[int, ...]]:
    names = sorted({n for n in layers if n != LOGITS})
    shapes = probe_shapes(model, names, data.input_shape) if names else {}
    return {**shapes, LOGITS: (data.num_classes,)}


def _row(role: str, seed: int, model: nn.Module, arch: str, ev: Any, seconds: float, **extra: Any) -> dict:
    return {
        "role": role,
        "seed": seed,
        "arch": arch,
        "params": count_params(model),
        "test_acc": ev.acc,
        "test_errors": ev.errors,
        "test_nll": ev.nll,
        "train_seconds": round(seconds, 2),
        **extra,
    }


def summary_path(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name / "summary.json"


def read_summary(path: Path) -> dict:
    return json.loads(Path(path).read_text())
