"""Online, mutual and self-distillation, several teachers, teacher-assistant chains: the roles ``dml``,
``born_again``, ``multi_teacher`` and ``ta_chain`` of :func:`kdistill.pipeline.run_experiment`.

Every one of them uses the ``kd`` role's loss (:func:`~kdistill.losses.kd_loss_parts` at ``T``, ``alpha``;
each section's ``T`` / ``alpha`` default to ``kd``'s), the one training loop (:func:`~kdistill.trainer.fit`)
and the same student evaluation; extra ``terms`` apply to the ``kd`` role only. Before any training,
:func:`check_modes` builds every model they use and probes it with one forward, so that a spec that
cannot be built, a missing checkpoint or models that disagree on the number of classes fail at once.

- ``dml``: a :class:`~kdistill.multi.Cohort` of peers trained together from scratch (``student.train``'s
  recipe, one ``fit``); one row per peer (``peer``) and one for the peers' ensemble.
- ``born_again``: generation 0 (the student's architecture) trained on the labels, as in Furlanello et al.
  (2018), or distilled from the teacher (``born_again.start``); generation ``k + 1`` distilled from
  generation ``k``, loaded frozen from its ``weights.pt``; one row per generation and one for their
  ensemble (mean softmax of generations 0..N).
- ``multi_teacher``: a student distilled from a :class:`~kdistill.multi.MultiTeacher`, the weighted mean of
  several teachers' soft targets; teachers are loaded from checkpoints or trained once and cached, like
  the run's teacher.
- ``ta_chain``: teacher -> ``ta_chain.assistants`` -> student, each stage distilled from the previous one,
  loaded frozen from its ``weights.pt``; one row per stage.

Seeds: the model of position ``k`` (peer ``k``, generation ``k``, assistant ``k``) is initialised, and its
data shuffled, with seed ``seed + 1000 k``; so peer 0, generation 0 and the chain's and multi-teacher's
student start exactly like the scratch and kd students of the same seed (paired comparisons).

Run directory, besides the pipeline's (every trained model has its own top-level directory, so that
``--resume`` and a fresh start handle them like any student)::

    dml-seed<s>/                     the cohort's fit (metrics, best.pt, last.pt); row.json lists every row
    dml-seed<s>/peer<i>/             weights.pt, predictions.pt of peer i
    born_again-seed<s>-gen<k>/       generation k: metrics, weights.pt, predictions.pt, row.json
    ta_chain-seed<s>-assistant<k>/   assistant k (from 1); ta_chain-seed<s>-student/ the chain's student
    multi_teacher-seed<s>/           the student distilled from the teachers' mean soft targets
    multi_teacher-t<i>/              multi_teacher.teachers[i] when this run trains it (cached in _teachers/)

Rows of these roles carry ``variant`` (``peer0``, ``gen2``, ``assistant1``, ``student``, ``ensemble``;
absent for ``multi_teacher``), which the summary aggregates separately (``dml/peer0``), ``dir`` (the
model's directory, ``None`` for an ensemble), ``student`` (the model has the student's spec) and
``headline`` (the row stands for its role in the deployment verdict: peers of the student's spec, the
last generation, the chain's student).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill import dist
from kdistill.config import (
    BornAgainConfig,
    ConfigError,
    DMLConfig,
    ExperimentConfig,
    ModelSpec,
    TrainConfig,
)
from kdistill.data import DataBundle
from kdistill.distiller import Distiller, FrozenTeacher, LogitCache, Supervised
from kdistill.io import CheckpointError, atomic_save, atomic_write_text, safe_load
from kdistill.models import build_model
from kdistill.multi import Cohort, MultiTeacher, mixture_logits
from kdistill.pipeline import (
    TeacherInfo,
    _row,
    get_teacher,
    load_weights_into,
    log,
    save_model,
    student_metrics,
)  # fmt: skip
from kdistill.trainer import fit, predict, score
from kdistill.views import is_augmented

MODE_ROLES = ("dml", "born_again", "multi_teacher", "ta_chain")
SEED_STRIDE = 1000


def sub_seed(seed: int, k: int) -> int:
    """Seed of the ``k``-th model of a role (peer, generation, assistant); ``k = 0`` is the run's seed."""
    return seed + SEED_STRIDE * k


def _dml(cfg: ExperimentConfig) -> DMLConfig:
    return cfg.dml or DMLConfig()


def _born_again(cfg: ExperimentConfig) -> BornAgainConfig:
    return cfg.born_again or BornAgainConfig()


def peer_specs(cfg: ExperimentConfig) -> list[ModelSpec]:
    return list(_dml(cfg).peers or [cfg.student.model, cfg.student.model])


def loss_settings(cfg: ExperimentConfig, role: str) -> tuple[float, float]:
    """``(T, alpha)`` of a mode role: its section's, where given, else ``kd``'s."""
    section = {"dml": _dml(cfg), "born_again": _born_again(cfg)}.get(role) or getattr(cfg, role)
    T = section.T if section.T is not None else cfg.kd.T
    alpha = section.alpha if section.alpha is not None else cfg.kd.alpha
    return T, alpha


def rows_per_seed(cfg: ExperimentConfig, role: str) -> int:
    """Summary rows a role adds per seed (1 for the pipeline's own roles)."""
    if role == "dml":
        return len(peer_specs(cfg)) + 1  # the peers and their ensemble
    if role == "born_again":
        return _born_again(cfg).generations + 2  # generations 0..N and their ensemble
    if role == "ta_chain":
        assert cfg.ta_chain is not None
        return len(cfg.ta_chain.assistants) + 1
    return 1


# ----------------------------------------------------------------------------- checks before training


def _models_of(cfg: ExperimentConfig, role: str) -> list[tuple[str, ModelSpec, str | None]]:
    """``(where in the config, spec, checkpoint)`` of every model a role builds, in order."""
    teacher = ("teacher.model", cfg.teacher.model, cfg.teacher.checkpoint)
    student = ("student.model", cfg.student.model, None)
    if role == "dml":
        if _dml(cfg).peers is None:
            return [student]
        return [(f"dml.peers[{i}]", spec, None) for i, spec in enumerate(peer_specs(cfg))]
    if role == "born_again":
        return ([teacher] if _born_again(cfg).start == "teacher" else []) + [student]
    if role == "multi_teacher":
        mc = cfg.multi_teacher
        assert mc is not None
        listed = [(f"multi_teacher.teachers[{i}].model", tc.model, tc.checkpoint) for i, tc in enumerate(mc.teachers)]
        return ([teacher] if mc.include_main else []) + listed + [student]
    assert cfg.ta_chain is not None
    return [teacher, *[(f"ta_chain.assistants[{i}]", s, None) for i, s in enumerate(cfg.ta_chain.assistants)], student]


_WHO = {
    "dml": "the cohort's peers learn from each other's soft targets",
    "born_again": "each generation learns from the previous one's soft targets",
    "multi_teacher": "the student learns from the mean of the teachers' soft targets",
    "ta_chain": "each stage of teacher -> assistants -> student learns from the previous stage's soft targets",
}


def _probe(where: str, spec: ModelSpec, checkpoint: str | None, data: DataBundle) -> int:
    """Build ``spec`` (and load its checkpoint), run two training images through it; its output width."""
    try:
        model = build_model(spec.arch, data.input_shape, data.num_classes, spec.kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: cannot build the model: {e}") from None
    if checkpoint is not None and where != "teacher.model":  # the run's teacher: get_teacher loads it
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(
                f"{where.removesuffix('.model')}.checkpoint: {path} not found (looked relative to {Path.cwd()}); "
                "give the weights file, or null to train the teacher in this run"
            )
        try:
            load_weights_into(model, path)
        except ValueError as e:
            raise CheckpointError(f"{where.removesuffix('.model')}.checkpoint: {e}") from None
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.train.x[:2])
    except Exception as e:  # any failure of a user model is reported with its config key
        raise ConfigError(
            f"{where} ({spec.arch} {spec.kwargs}): a forward pass on two training images of shape "
            f"{tuple(data.input_shape)} fails: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{where} ({spec.arch}): expected logits of shape (batch, classes), got {shape}")
    return int(out.shape[1])


def check_modes(cfg: ExperimentConfig, data: DataBundle) -> None:
    """Fail before any training when a mode role's models cannot work together.

    Builds every model the config's mode roles use (the run's teacher and student where they take part),
    loads the checkpoints of extra teachers and runs one forward of two training images through each:
    a spec that cannot be built, a missing or mismatched checkpoint, or a model whose output does not have
    the data's number of classes (a ``num_classes`` in a spec's kwargs, a user factory that ignores it) is
    a :class:`ConfigError` (or :class:`CheckpointError`) that names the config key.
    """
    probed: dict[tuple[str, str], int] = {}
    with torch.random.fork_rng(devices=[]):  # probing draws initial weights: leave the run's RNG alone
        for role in (r for r in dict.fromkeys(cfg.roles) if r in MODE_ROLES):
            widths = {}
            for where, spec, ckpt in _models_of(cfg, role):
                key = (where, json.dumps(spec.model_dump(), sort_keys=True, default=str))
                if key not in probed:
                    probed[key] = _probe(where, spec, ckpt, data)
                widths[where] = probed[key]
            if any(n != data.num_classes for n in widths.values()):
                listing = ", ".join(f"{w} -> {n}" for w, n in widths.items())
                raise ConfigError(
                    f"{role}: the models disagree on the number of classes ({listing}), but {_WHO[role]}, so "
                    f"every one must output the data's {data.num_classes} classes ({data.name}); remove a "
                    "num_classes from the model kwargs, or make the factory take num_classes"
                )


# ----------------------------------------------------------------------------- running the roles


@dataclass
class ModeContext:
    """What the mode roles of one run share; built by ``run_experiment`` once its teacher is ready."""

    cfg: ExperimentConfig
    data: DataBundle
    run_dir: Path
    smoke: bool
    device: torch.device
    resume: bool
    teacher: TeacherInfo
    frozen: FrozenTeacher  # the run's teacher, as the kd role sees it
    t_test: torch.Tensor  # its logits on test and validation
    t_val: torch.Tensor
    _multi: tuple[FrozenTeacher, dict] | None = field(default=None, repr=False)
    _targets: dict[str, LogitCache] = field(default_factory=dict, repr=False)  # of teachers shared by seeds

    @property
    def fast(self) -> bool:
        return self.cfg.kd.teacher_precision == "auto"


def run_mode(role: str, seed: int, ctx: ModeContext) -> list[dict]:
    """Train one seed of a mode role; its summary rows."""
    runners = {"dml": _run_dml, "born_again": _run_born_again, "multi_teacher": _run_multi_teacher,
               "ta_chain": _run_ta_chain}  # fmt: skip
    return runners[role](ctx, seed)


def frozen_from(path: Path, spec: ModelSpec, ctx: ModeContext) -> FrozenTeacher:
    """A finished stage as the next stage's teacher: rebuilt from its spec, loaded from ``path``, frozen."""
    model = build_model(spec.arch, ctx.data.input_shape, ctx.data.num_classes, spec.kwargs)
    load_weights_into(model, path)
    return FrozenTeacher(model.to(ctx.device), fast=ctx.fast)


def _soft_targets(ctx: ModeContext, teacher: FrozenTeacher, train: TrainConfig) -> LogitCache | None:
    """The teacher's logits on the transfer set, computed once (exact float32), or None: the teacher then
    runs online on every batch, with augmentation (no view cache here) or ``kd.cache.mode=online``."""
    if is_augmented(train.augment) or ctx.cfg.kd.cache.mode == "online":
        return None
    # The run's teacher and the multi-teacher serve every seed: their targets are computed once per run.
    shared = "teacher" if teacher is ctx.frozen else "multi" if ctx._multi and teacher is ctx._multi[0] else None
    if shared in ctx._targets:
        return ctx._targets[shared]
    ts = ctx.data.transfer_set
    cache = LogitCache(predict(teacher.model, ts, 500), ts.index)
    if shared is not None:
        ctx._targets[shared] = cache
    return cache


def _evaluate(ctx: ModeContext, model: nn.Module, role: str, seed: int, spec: ModelSpec, out: Path, seconds: float,
              **extra: Any) -> tuple[dict, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Row of a trained model (test metrics, its own validation accuracy); writes ``predictions.pt``."""
    data = ctx.data
    test_logits, val_logits = predict(model, data.test), predict(model, data.val)
    ev, metrics = student_metrics(test_logits, val_logits, ctx.t_val, data, ctx.cfg.kd.bias_shift)
    extra["val_acc"] = score(val_logits, data.val.y).acc
    extra.update(metrics)
    row = _row(role, seed, model, spec.arch, ev, seconds, **extra)
    if dist.is_main():
        atomic_save({"test_logits": test_logits, "val_logits": val_logits}, out / "predictions.pt")
    log(f"{out.relative_to(ctx.run_dir)}: test acc {ev.acc:.4f} ({ev.errors} errors), {seconds:.0f}s")
    return row, test_logits, val_logits


def _ensemble_row(ctx: ModeContext, role: str, seed: int, members: list[dict], tests: list[torch.Tensor],
                  vals: list[torch.Tensor], seconds: float, steps: int) -> dict:  # fmt: skip
    """The members' ensemble (mean softmax) scored like a model; ``extra_params``: beyond one member."""
    data = ctx.data
    t, v = mixture_logits(tests), mixture_logits(vals)
    ev, metrics = student_metrics(t, v, ctx.t_val, data, ctx.cfg.kd.bias_shift)
    params = sum(int(m["params"]) for m in members)
    row = {
        "role": role, "seed": seed, "arch": "+".join(m["arch"] for m in members), "params": params,
        "test_acc": ev.acc, "test_errors": ev.errors, "test_nll": ev.nll, "train_seconds": round(seconds, 2),
        "variant": "ensemble", "ensemble": True, "members": [m["variant"] for m in members], "dir": None,
        "student": False, "headline": False, "extra_params": params - int(members[0]["params"]),
        "val_acc": score(v, data.val.y).acc, "steps": steps, **metrics,
    }  # fmt: skip
    log(f"{role} seed {seed}: ensemble of {', '.join(row['members'])}: test acc {ev.acc:.4f} ({ev.errors} errors)")
    return row


def _kept(ctx: ModeContext, out: Path) -> Any:
    """The finished rows of ``out`` when resuming (its ``row.json``), else None."""
    if ctx.resume and (out / "row.json").is_file():
        log(f"{out.name}: finished before the interruption, kept")
        return json.loads((out / "row.json").read_text())
    return None


def _mark(out: Path, rows: Any) -> None:
    if dist.is_main():
        atomic_write_text(out / "row.json", json.dumps(rows))  # written last: marks the model finished
    dist.barrier()  # a next stage loads this one's weights.pt, which rank 0 wrote


def _train(ctx: ModeContext, role: str, seed: int, name: str, spec: ModelSpec, train: TrainConfig,
           teacher: Callable[[], FrozenTeacher | None], model_seed: int, **extra: Any) -> dict:  # fmt: skip
    """Train one model into ``run_dir/name``: on the labels when ``teacher()`` is None, else distilled from it
    (KD at the role's T, alpha, on the transfer set). ``teacher`` is only called when training is needed."""
    out = ctx.run_dir / name
    kept = _kept(ctx, out)
    if kept is not None:
        return kept
    data = ctx.data
    frozen = teacher()
    torch.manual_seed(model_seed)
    model = build_model(spec.arch, data.input_shape, data.num_classes, spec.kwargs).to(ctx.device)
    if frozen is None:
        objective: nn.Module = Supervised(model)
        split = data.student_labelled
    else:
        T, alpha = loss_settings(ctx.cfg, role)
        objective = Distiller(model, frozen, T=T, alpha=alpha, cache=_soft_targets(ctx, frozen, train))
        split = data.transfer_set
    res = fit(objective, split, data.val, train, seed=model_seed, out_dir=out, desc=name, device=ctx.device,
              resume=ctx.resume)  # fmt: skip
    save_model(model, spec.model_dump(), data, out / "weights.pt", role=role, seed=seed,
               variant=extra.get("variant"), best_epoch=res.best_epoch)  # fmt: skip
    row, _, _ = _evaluate(ctx, model, role, seed, spec, out, res.train_seconds, dir=name, best_epoch=res.best_epoch,
                          steps=res.steps, **extra)  # fmt: skip
    _mark(out, row)
    return row


def _predictions(ctx: ModeContext, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    p = safe_load(ctx.run_dir / row["dir"] / "predictions.pt")
    return p["test_logits"], p["val_logits"]


def _run_dml(ctx: ModeContext, seed: int) -> list[dict]:
    cfg, data = ctx.cfg, ctx.data
    name = f"dml-seed{seed}"
    out = ctx.run_dir / name
    kept = _kept(ctx, out)
    if kept is not None:
        return kept
    specs = peer_specs(cfg)
    peers = []
    for i, spec in enumerate(specs):
        torch.manual_seed(sub_seed(seed, i))  # distinct initialisations: identical peers would stay identical
        peers.append(build_model(spec.arch, data.input_shape, data.num_classes, spec.kwargs))
    T, alpha = loss_settings(cfg, "dml")
    cohort = Cohort(peers, T=T, alpha=alpha).to(ctx.device)
    res = fit(cohort, data.transfer_set, data.val, cfg.student.train, seed=seed, out_dir=out, desc=name,
              device=ctx.device, resume=ctx.resume)  # fmt: skip
    rows, tests, vals = [], [], []
    for i, (peer, spec) in enumerate(zip(peers, specs, strict=True)):
        d = out / f"peer{i}"
        save_model(peer, spec.model_dump(), data, d / "weights.pt", role="dml", seed=seed, variant=f"peer{i}",
                   best_epoch=res.best_epoch)  # fmt: skip
        is_student = spec == cfg.student.model
        row, t, v = _evaluate(ctx, peer, "dml", seed, spec, d, res.train_seconds, variant=f"peer{i}", peer=i,
                              dir=f"{name}/peer{i}", student=is_student, headline=is_student,
                              best_epoch=res.best_epoch, steps=res.steps)  # fmt: skip
        rows.append(row)
        tests.append(t)
        vals.append(v)
    rows.append(_ensemble_row(ctx, "dml", seed, rows, tests, vals, res.train_seconds, res.steps))
    _mark(out, rows)
    return rows


def _run_born_again(ctx: ModeContext, seed: int) -> list[dict]:
    cfg = ctx.cfg
    bc = _born_again(cfg)
    spec = cfg.student.model
    rows: list[dict] = []
    for k in range(bc.generations + 1):
        teacher: Callable[[], FrozenTeacher | None]
        if k == 0:
            teacher = (lambda: ctx.frozen) if bc.start == "teacher" else (lambda: None)
        else:
            prev = ctx.run_dir / rows[-1]["dir"] / "weights.pt"
            teacher = lambda prev=prev: frozen_from(prev, spec, ctx)
        rows.append(_train(ctx, "born_again", seed, f"born_again-seed{seed}-gen{k}", spec, cfg.student.train, teacher,
                           sub_seed(seed, k), variant=f"gen{k}", generation=k, student=True,
                           headline=k == bc.generations))  # fmt: skip
    preds = [_predictions(ctx, r) for r in rows]  # from the files: the same whether resumed or not
    seconds, steps = sum(r["train_seconds"] for r in rows), sum(int(r["steps"]) for r in rows)
    rows.append(_ensemble_row(ctx, "born_again", seed, rows, [p[0] for p in preds], [p[1] for p in preds], seconds,
                              steps))  # fmt: skip
    return rows


def _run_ta_chain(ctx: ModeContext, seed: int) -> list[dict]:
    cfg = ctx.cfg
    tc = cfg.ta_chain
    assert tc is not None
    stages = [(f"assistant{k + 1}", s, tc.train or cfg.student.train, sub_seed(seed, k + 1))
              for k, s in enumerate(tc.assistants)]  # fmt: skip
    stages.append(("student", cfg.student.model, cfg.student.train, seed))
    rows: list[dict] = []
    prev: tuple[Path, ModelSpec] | None = None
    for k, (variant, spec, train, model_seed) in enumerate(stages):
        teacher: Callable[[], FrozenTeacher | None]
        if prev is None:
            teacher = lambda: ctx.frozen
        else:
            teacher = lambda prev=prev: frozen_from(prev[0], prev[1], ctx)
        name = f"ta_chain-seed{seed}-{variant}"
        rows.append(_train(ctx, "ta_chain", seed, name, spec, train, teacher, model_seed, variant=variant, stage=k + 1,
                           student=spec == cfg.student.model, headline=variant == "student"))  # fmt: skip
        prev = (ctx.run_dir / name / "weights.pt", spec)
    return rows


def multi_teacher(ctx: ModeContext) -> tuple[FrozenTeacher, dict]:
    """The multi_teacher role's teachers, loaded or trained once per run, as one frozen MultiTeacher, and
    what the rows say about them (each one's test accuracy and origin, the weights, the mean's accuracy)."""
    if ctx._multi is not None:
        return ctx._multi
    cfg, data = ctx.cfg, ctx.data
    mc = cfg.multi_teacher
    assert mc is not None
    models: list[nn.Module] = []
    info: list[dict] = []
    if mc.include_main:
        models.append(ctx.teacher.model)
        info.append({"name": "teacher", "arch": cfg.teacher.model.arch, "source": ctx.teacher.source,
                     "weights": str(ctx.teacher.path), "test_acc": score(ctx.t_test, data.test.y).acc})  # fmt: skip
    for i, tc in enumerate(mc.teachers):
        out = f"multi_teacher-t{i}"
        log(f"multi_teacher: teacher {len(models)} is multi_teacher.teachers[{i}] ({tc.model.arch}), in {out}/")
        t = get_teacher(cfg.model_copy(update={"teacher": tc}), data, ctx.run_dir, ctx.smoke, ctx.device,
                        ctx.resume, out=out)  # fmt: skip
        t.model.to(ctx.device)
        acc = score(predict(t.model, data.test), data.test.y).acc
        log(f"multi_teacher: teachers[{i}] ({t.source}): test acc {acc:.4f}")
        models.append(t.model)
        info.append({"name": f"multi_teacher.teachers[{i}]", "arch": tc.model.arch, "source": t.source,
                     "weights": str(t.path), "test_acc": acc})  # fmt: skip
    T, _ = loss_settings(cfg, "multi_teacher")
    mixed = MultiTeacher(models, mc.weights, T=T)
    frozen = FrozenTeacher(mixed, fast=ctx.fast)
    acc = score(predict(mixed, data.test), data.test.y).acc
    log(f"multi_teacher: mean soft targets (T={T:g}) of {len(models)} teachers, weights "
        f"{[round(w, 4) for w in mixed.weights]}: test acc {acc:.4f}")  # fmt: skip
    ctx._multi = (frozen, {"teachers": info, "teacher_weights": mixed.weights, "teacher_mean_test_acc": acc})
    return ctx._multi


def _run_multi_teacher(ctx: ModeContext, seed: int) -> list[dict]:
    cfg = ctx.cfg
    frozen, about = multi_teacher(ctx)
    row = _train(ctx, "multi_teacher", seed, f"multi_teacher-seed{seed}", cfg.student.model, cfg.student.train,
                 lambda: frozen, seed, student=True, headline=True, **about)  # fmt: skip
    return [row]


# ----------------------------------------------------------------------------- descriptions


def _spec_text(spec: dict) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in (spec.get("kwargs") or {}).items())
    return f"`{spec['arch']}`" + (f" ({kw})" if kw else "")


def _settings(cfg: dict, role: str) -> str:
    section = cfg.get(role) or {}
    T = section.get("T") if section.get("T") is not None else cfg["kd"]["T"]
    alpha = section.get("alpha") if section.get("alpha") is not None else cfg["kd"]["alpha"]
    return f"T={T:g}, α={alpha:g}"


def describe(cfg: dict, role: str, variant: str | None = None) -> str:
    """One line on what a mode role (or one of its rows) is, from a resolved config as plain data."""
    student = cfg["student"]["model"]
    if role == "dml":
        peers = (cfg.get("dml") or {}).get("peers") or [student, student]
        if variant == "ensemble":
            return f"mean softmax of the {len(peers)} DML peers"
        which = f"peer {variant.removeprefix('peer')} of " if variant else ""
        return (f"{which}a cohort of {len(peers)} trained together from scratch: CE + the other peers' soft "
                f"targets ({_settings(cfg, role)})")  # fmt: skip
    if role == "born_again":
        ba = cfg.get("born_again") or {}
        n = ba.get("generations", 3)
        if variant == "ensemble":
            return f"mean softmax of born-again generations 0–{n}"
        start = "from the teacher" if ba.get("start") == "teacher" else "on the labels"
        if variant == "gen0":
            return f"born-again generation 0, trained {start}"
        if variant:
            k = int(variant.removeprefix("gen"))
            return f"born-again generation {k}: KD ({_settings(cfg, role)}) from generation {k - 1}"
        return (f"born-again networks: generation 0 trained {start}, then generations 1–{n}, each distilled "
                "from its predecessor")  # fmt: skip
    if role == "multi_teacher":
        mc = cfg.get("multi_teacher") or {}
        names = (["teacher"] if mc.get("include_main", True) else []) + [
            _spec_text(t["model"]) for t in mc.get("teachers", [])
        ]
        weights = mc.get("weights") or [1] * len(names)
        mix = " + ".join(f"{w / sum(weights):.2g}×{n}" for w, n in zip(weights, names, strict=False))
        return f"CE + KD ({_settings(cfg, role)}) from the mean soft targets of {len(names)} teachers: {mix}"
    if role == "ta_chain":
        assistants = (cfg.get("ta_chain") or {}).get("assistants") or []
        chain = " → ".join(["teacher", *[f"assistant {_spec_text(a)}" for a in assistants], "student"])
        if variant and variant != "student":
            return f"teacher assistant {variant.removeprefix('assistant')} of the chain {chain}"
        return f"CE + KD ({_settings(cfg, role)}) along the chain {chain}"
    raise ValueError(f"{role} is not a mode role ({', '.join(MODE_ROLES)})")


def mode_lines(cfg: dict) -> list[str]:
    """Markdown bullets describing the run's mode roles (none when it has none)."""
    return [f"- {role}: {describe(cfg, role)}." for role in cfg.get("roles", []) if role in MODE_ROLES]
