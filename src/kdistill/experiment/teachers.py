"""Teachers of a run: loaded, reused or trained (:func:`get_teacher`), frozen from a finished stage
(:func:`frozen_from`), and the one place that decides where a student's teacher outputs come from
(:func:`teacher_source`): online, a per-sample cache or an augmented view cache.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from kdistill import dist
from kdistill.augment import is_augmented, is_mixing
from kdistill.caches import CACHE_FORMAT, CacheError, LogitCache, ViewCache, cache_key, state_fingerprint
from kdistill.config import ExperimentConfig, ModelSpec, TeacherConfig, TrainConfig
from kdistill.data import BatchLoader, Split
from kdistill.data.loader import INFERENCE_BATCH
from kdistill.data.store import fingerprint
from kdistill.distiller import Distiller, Objective, Supervised
from kdistill.experiment.context import RunContext, TeacherInfo, log
from kdistill.experiment.evaluate import model_row
from kdistill.io import CheckpointError, atomic_copy, atomic_save, atomic_write_text, safe_load
from kdistill.lock import dir_lock
from kdistill.models import build_model, count_params, load_weights_into, save_model_file
from kdistill.teacher import FrozenTeacher, OnlineTeacher, TeacherSource, bf16_supported
from kdistill.trainer import fit, predict
from kdistill.tta import ShiftAveraged, view_count


def get_teacher(ctx: RunContext, tc: TeacherConfig | None = None, out: str = "teacher") -> TeacherInfo:
    """``tc`` (default: the run's ``teacher:``) loaded from its checkpoint, reused from the teacher cache, or
    trained into ``run_dir/<out>`` and cached for later runs."""
    cfg = ctx.cfg if tc is None else ctx.cfg.model_copy(update={"teacher": tc})
    if cfg.teacher.checkpoint:
        info = _load_teacher(ctx, cfg)
    else:
        key = cfg.teacher_key() + ("-smoke" if ctx.smoke else "")
        path = Path(cfg.teacher_cache_dir or Path(cfg.output_dir) / "_teachers") / key / "teacher.pt"
        info = _reuse_teacher(ctx, cfg, path) or _train_teacher(ctx, cfg, path, key, out)
    tta = cfg.teacher.tta
    if tta is None:
        return info
    # Wrapped after saving: the teacher's file (and its training cache) holds the plain network.
    model = ShiftAveraged(info.model, tta.shift, tta.pattern, tta.flip)
    mirrored = ", with their mirror images" if tta.flip else ""
    log(f"teacher: test-time augmentation, mean logits over {model.views} views shifted by {tta.shift} px{mirrored}")
    return replace(info, model=model)


def _new_teacher(ctx: RunContext, cfg: ExperimentConfig) -> nn.Module:
    """The teacher's architecture, initialised from the run's first seed."""
    spec = cfg.teacher.model
    torch.manual_seed(cfg.seeds[0])
    return build_model(spec.arch, ctx.data.input_shape, ctx.data.num_classes, spec.kwargs)


def _load_teacher(ctx: RunContext, cfg: ExperimentConfig) -> TeacherInfo:
    model = _new_teacher(ctx, cfg)
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


def _reuse_teacher(ctx: RunContext, cfg: ExperimentConfig, path: Path) -> TeacherInfo | None:
    """The cached teacher of this recipe, when it was trained on this very data."""
    if not path.is_file():
        return None
    model = _new_teacher(ctx, cfg)
    meta = load_weights_into(model, path)
    if meta.get("data_fingerprint") == ctx.data.fingerprint:
        log(f"teacher: reusing {path} (same teacher config and data; delete it to retrain)")
        return TeacherInfo(model, "reused", path, float(meta.get("train_seconds", 0.0)))
    log(f"teacher: {path} was trained on other data; retraining")
    return None


def _train_teacher(ctx: RunContext, cfg: ExperimentConfig, path: Path, key: str, out: str) -> TeacherInfo:
    """Train the teacher on every training label, keep it in the teacher cache (and a copy in the run)."""
    model, spec, data = _new_teacher(ctx, cfg), cfg.teacher.model, ctx.data
    log(f"teacher: training {spec.arch} ({count_params(model):,} params) for {cfg.teacher.train.epochs} epochs")
    res = fit(
        Supervised(model),
        data.train,
        data.val,
        cfg.teacher.train,
        seed=cfg.seeds[0],
        out_dir=ctx.run_dir / out,
        desc=out,
        device=ctx.device,
        resume=ctx.resume,
    )
    if dist.is_main():
        meta = {"data_fingerprint": data.fingerprint, "train_seconds": res.train_seconds, "teacher_key": key}
        save_model_file(
            model,
            spec.model_dump(),
            data.input_shape,
            data.num_classes,
            path,
            data.extra.get("normalize"),
            **meta,
            best_epoch=res.best_epoch,
        )
        atomic_write_text(path.parent / "config.yaml", cfg.to_yaml())
        # The run directory gets its own copy, so that `checkpoints/` can be refreshed from any run.
        atomic_copy(path, ctx.run_dir / out / "weights.pt")
    dist.barrier()
    return TeacherInfo(model, "trained", path, res.train_seconds)


def main_teacher(ctx: RunContext) -> TeacherInfo:
    """The run's own teacher, got once per run (loaded, reused from the cache, or trained)."""
    return ctx.once("teacher:main", lambda: get_teacher(ctx))


def attach_teacher(ctx: RunContext) -> TeacherInfo:
    """Get the run's teacher into ``ctx`` (``teacher``, ``frozen``); its test and validation predictions are got
    when first asked for (``ctx.t_test``, ``ctx.t_val``): a ``--jobs`` worker starts training while its parent
    scores the teacher, and reads the predictions back when a student's row needs them."""
    t = main_teacher(ctx)
    t.model.to(ctx.device)
    ctx.teacher, ctx.frozen = t, FrozenTeacher(t.model, fast=ctx.fast)
    ctx.teacher_predictions = lambda: _teacher_predictions(ctx, t)
    return t


def _teacher_predictions(ctx: RunContext, t: TeacherInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits on the test and validation images, computed once per teacher and images by whichever
    process asks first (the parent of ``--jobs`` workers, an earlier run on the same images: the demo's two
    scenarios share teacher and test set) and read back by the others and by ``--resume``."""
    data = ctx.data
    got, _ = shared_outputs(
        ctx,
        "predictions",
        [state_fingerprint(t.model), fingerprint(data.test.x), fingerprint(data.val.x)],
        lambda: {"test": predict(t.model, data.test), "val": predict(t.model, data.val)},
    )
    return got["test"], got["val"]


def prepare_teacher(ctx: RunContext) -> dict:
    """Get the run's teacher, score it, keep its predictions for the report; its summary row.

    Predictions are kept so that reports (soft targets, dark knowledge, calibration) are drawn from files,
    never recomputed from logs: the teacher's on validation and test (each student writes its own).
    """
    t = attach_teacher(ctx)
    data = ctx.data
    # One test image per class (the first of each) for the soft-target figure of the report.
    firsts = [int((data.test.y == c).nonzero()[0]) for c in range(data.num_classes) if bool((data.test.y == c).any())]
    if dist.is_main():
        preds = {
            "test_logits": ctx.t_test,
            "val_logits": ctx.t_val,
            "test_labels": data.test.y,
            "val_labels": data.val.y,
            "class_names": data.class_names,
            "sample_rows": torch.tensor(firsts),
            "sample_images": data.test.x[firsts],
        }
        atomic_save(preds, ctx.run_dir / "teacher" / "predictions.pt")
    row = model_row(
        ctx,
        "teacher",
        ctx.cfg.seeds[0],
        _teacher_arch(ctx.cfg.teacher),
        count_params(t.model),
        ctx.t_test,
        ctx.t_val,
        t.train_seconds,
        left_out=False,
        source=t.source,
        weights=str(t.path),
    )
    log(f"teacher: test acc {row['test_acc']:.4f} ({row['test_errors']} errors)")
    return row


def _teacher_arch(tc: TeacherConfig) -> str:
    """The teacher row's architecture, with its test-time views when it has them."""
    if tc.tta is None:
        return tc.model.arch
    views = view_count(tc.tta.shift, tc.tta.pattern, tc.tta.flip)
    mirrored = ", mirrored" if tc.tta.flip else ""
    return f"{tc.model.arch} + tta ({views} views, {tc.tta.shift} px{mirrored})"


def frozen_from(ctx: RunContext, path: Path, spec: ModelSpec) -> FrozenTeacher:
    """A finished stage as the next stage's teacher: rebuilt from its spec, loaded from ``path``, frozen."""
    model = build_model(spec.arch, ctx.data.input_shape, ctx.data.num_classes, spec.kwargs)
    load_weights_into(model, path)
    return FrozenTeacher(model.to(ctx.device), fast=ctx.fast)


def teacher_source(
    ctx: RunContext, teacher: FrozenTeacher, train: TrainConfig, layers: Sequence[str] = (), key: str | None = None
) -> TeacherSource:
    """Where a student distilled from ``teacher`` on the transfer set gets its teacher outputs.

    ``kd.cache.mode=online``: the teacher runs on every batch. Otherwise they are computed once: without
    augmentation, one row of logits (and of ``layers``) per transfer image, built by rank 0 and shared with
    the other ranks; with augmentation, a :class:`~kdistill.caches.ViewCache` of ``kd.cache.views`` fixed
    views per image on disk, keyed by teacher, data and augmentation and reused by later runs (online when
    ``layers`` are needed: a view cache holds logits only). ``key`` names a teacher that every seed shares
    (the run's teacher, a multi-teacher mixture): its outputs are then computed once per run.
    """
    if key is None:
        return _build_source(ctx, teacher, train, layers)
    return ctx.once(f"source:{key}:{','.join(layers)}", lambda: _build_source(ctx, teacher, train, layers))


def _build_source(ctx: RunContext, teacher: FrozenTeacher, train: TrainConfig, layers: Sequence[str]) -> TeacherSource:
    cfg, ts = ctx.cfg, ctx.data.transfer_set
    if cfg.kd.cache.mode == "online":
        log("teacher: online (runs on every training batch)")
        return OnlineTeacher(teacher, layers)
    if is_mixing(train.augment):
        # A cached view belongs to one image; a blend of two exists only in its batch, so the teacher must see it.
        log("teacher: online, since mixup/cutmix blend images that no cache holds (function matching)")
        return OnlineTeacher(teacher, layers)
    if not is_augmented(train.augment):
        t0 = time.perf_counter()
        got = _logit_cache(ctx, teacher, layers) if dist.is_main() else None
        cache, how = dist.broadcast_object(got)
        what = "logits" + (f" and layers {', '.join(layers)}" if layers else "")
        log(
            f"teacher {what} {how} for {len(ts)} transfer images in {time.perf_counter() - t0:.1f}s "
            f"({cache.nbytes() / 2**20:.0f} MiB)"
        )
        return cache
    if layers:
        log(f"teacher: online, since terms read teacher layers {list(layers)} and a view cache holds logits only")
        return OnlineTeacher(teacher, layers)
    return _view_cache(ctx, teacher, train)


def _logit_cache(ctx: RunContext, teacher: FrozenTeacher, layers: Sequence[str]) -> tuple[LogitCache, str]:
    """The teacher's logits on the transfer set, and how they were got ("cached": computed now; "read back": by
    an earlier process). Logits alone (a few MiB) go to the shared teacher-output cache (:func:`shared_outputs`);
    layers (possibly large feature maps) are computed per process and never written."""
    ts = ctx.data.transfer_set
    if layers:
        return LogitCache.build(teacher, BatchLoader(ts, INFERENCE_BATCH), layers), "cached"

    def build() -> dict:
        cache = LogitCache.build(teacher, BatchLoader(ts, INFERENCE_BATCH))
        return {"logits": cache.logits, "index": cache.index}

    saved, reused = shared_outputs(ctx, "logits", transfer_logits_key(teacher.model, ts), build)
    return LogitCache(saved["logits"], saved["index"]), "read back" if reused else "cached"


def transfer_logits_key(model: nn.Module, ts: Split) -> list[str | bytes]:
    """The parts that name a teacher's transfer-set logits in the shared cache (kind ``logits``): its weights and
    buffers, the images' bytes and their indices."""
    return [state_fingerprint(model), fingerprint(ts.x), ts.index.contiguous().numpy().tobytes()]


def outputs_dir(cfg: ExperimentConfig) -> Path:
    """Where teacher outputs shared between processes and runs live (``kd.cache.dir``, by default
    ``<output_dir>/_teacher_cache``): view caches, transfer-set logits, test and validation predictions."""
    return Path(cfg.kd.cache.dir or Path(cfg.output_dir) / "_teacher_cache")


def shared_outputs(
    ctx: RunContext, kind: str, parts: Sequence[str | bytes], compute: Callable[[], dict]
) -> tuple[dict, bool]:
    """``compute()``'s result, saved once as ``<outputs_dir>/<kind>/<key>.pt`` (``key``: a hash of ``parts``, which
    name the teacher's weights and the inputs' bytes) and read back by every later process: ``--jobs`` workers, a
    ``--resume``, or another run with the same teacher and images (the demo's two scenarios score the same
    teacher on the same test set and run it over the same 55,000 images). See :func:`shared_file`."""
    return shared_file(outputs_dir(ctx.cfg), kind, parts, compute)


def shared_file(root: Path, kind: str, parts: Sequence[str | bytes], compute: Callable[[], dict]) -> tuple[dict, bool]:
    """``compute()``'s result kept as ``<root>/<kind>/<key>.pt``, ``key`` a hash of ``parts``. Outputs are float32
    and exact, so a read-back equals a recomputation. An entry that exists is read without locking; a lock on
    ``<kind>/`` lets one process compute a missing one while the others wait (one lock per kind: a worker
    reading predictions never waits for another process's transfer-set logits); whether the result was read back
    is the second value."""
    path = shared_path(root, kind, parts)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    # atomic_save renames whole files into place: a reader needs no lock, and never waits while another process
    # computes a different entry (a transfer set's takes minutes); a damaged entry is rebuilt under the lock
    if (got := _read(path, say=False)) is not None:
        return got, True
    with dir_lock(directory):
        if (got := _read(path, say=True)) is not None:
            return got, True
        got = compute()
        atomic_save(got, path)
        return got, False


def shared_path(root: Path, kind: str, parts: Sequence[str | bytes]) -> Path:
    """Where :func:`shared_file` keeps the entry of ``parts``: ``<root>/<kind>/<hash of parts>.pt``."""
    h = hashlib.sha256(f"{kind}:{CACHE_FORMAT}".encode())
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
    return root / kind / f"{h.hexdigest()[:24]}.pt"


def _read(path: Path, say: bool) -> dict | None:
    """The entry at ``path``; None when there is none or it is damaged (rebuilt, never trusted; ``say``: log it)."""
    if not path.is_file():
        return None
    try:
        return safe_load(path)
    except CheckpointError as e:
        if say:
            log(f"teacher: {e}; computing it again")
        return None


def _view_cache(ctx: RunContext, teacher: FrozenTeacher, train: TrainConfig) -> ViewCache:
    cfg, cc, ts, aug = ctx.cfg, ctx.cfg.kd.cache, ctx.data.transfer_set, train.augment
    precision = "bf16" if teacher.fast and bf16_supported(ctx.device) else "float32"
    key = cache_key(teacher.model, ts.x, ts.index, aug, cc.views, cfg.data.split_seed, cc.topk, cfg.kd.T, precision)
    path = outputs_dir(cfg) / key
    if dist.is_main():
        try:
            cache = ViewCache.open(path, key)
            log(f"teacher: reusing view cache {path} ({len(cache)} images x {cache.views} views)")
        except CacheError as e:
            if (path / "meta.json").exists():
                log(f"teacher: {e}; rebuilding it")
            t0 = time.perf_counter()
            cache = ViewCache.build(
                teacher, ts, aug, cc.views, cfg.data.split_seed, path, key, topk=cc.topk, T=cfg.kd.T, device=ctx.device
            )
            log(
                f"teacher: {cc.views} augmented views of {len(ts)} transfer images cached ({precision}) in "
                f"{time.perf_counter() - t0:.1f}s ({cache.nbytes() / 2**20:.1f} MiB, {path})"
            )
    dist.barrier()
    return cache if dist.is_main() else ViewCache.open(path, key, verify=False)


def kd_objective(
    ctx: RunContext,
    teacher: Callable[[], FrozenTeacher],
    train: TrainConfig,
    T: float,
    alpha: float,
    key: str | None = None,
) -> Callable[[nn.Module], Objective]:
    """What trains a model distilled from ``teacher()`` (called only when the model is trained, i.e. not
    for one a resumed run kept), with its outputs from :func:`teacher_source`."""

    def build(model: nn.Module) -> Objective:
        frozen = teacher()
        return Distiller(model, frozen, T=T, alpha=alpha, source=teacher_source(ctx, frozen, train, key=key))

    return build
