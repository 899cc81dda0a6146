"""``kdistill run``: context -> checks -> teacher -> each role for each seed -> summary and report.

``run_experiment(cfg)`` writes ``<output_dir>/<name>/``::

    config.yaml                     resolved config (every default filled in)
    data.json                       the data as found: classes, counts per split, normalization, notes
    teacher/                        predictions.pt; metrics and weights.pt when trained here
    <role>-seed<k>/ ...             one directory per trained model (kdistill.experiment.train)
    summary.json, summary.md        one row per trained model + mean/std per role (kdistill.report.summary)
    report.html, *.png              the HTML report and its figures (kdistill.report.html)
"""

from __future__ import annotations

import os
import subprocess
import sys

from kdistill import dist
from kdistill.config import ExperimentConfig
from kdistill.data.inspect import record
from kdistill.environment import torch_threads
from kdistill.experiment.checks import check_resumable
from kdistill.experiment.context import RunContext, log, open_run, run_dir_of, smoke_config, start_writing
from kdistill.experiment.evaluate import deployment
from kdistill.experiment.roles import ROLES
from kdistill.experiment.teachers import attach_teacher, main_teacher, prepare_teacher
from kdistill.io import atomic_write_text
from kdistill.lock import run_lock
from kdistill.report.html import build_report
from kdistill.report.summary import write_summary


class JobError(RuntimeError):
    """A ``--jobs`` worker process failed; the message names its seeds and its exit code."""


def run_experiment(
    cfg: ExperimentConfig,
    smoke: bool = False,
    resume: bool = False,
    jobs: int = 1,
    worker_seeds: list[int] | None = None,
) -> dict:
    """Train/load the teacher and every (role, seed) model; write the run directory; return the summary.

    ``smoke=True`` runs the same pipeline on a few hundred samples for one epoch. ``resume=True`` continues
    an interrupted run of the same config: finished models are kept (their ``row.json``), an unfinished one
    continues from its ``last.pt`` exactly where it stopped. Under ``torchrun`` every rank runs this
    function; rank 0 alone writes files and returns the summary.

    ``jobs > 1`` trains the seeds in that many worker processes (``threads`` split between them, at least 1
    each): this process gets the teacher ready, the workers train their seeds' students into the run directory,
    and this process then collects their finished rows (as ``--resume`` does) into one summary. On 2 cores, two
    one-thread processes use them better than one two-thread process for models this small. ``worker_seeds``
    is the workers' side: only those seeds, no summary, under the lock that their parent holds.
    """
    original = cfg
    if smoke:
        cfg = smoke_config(cfg)
    if worker_seeds is not None:  # a --jobs worker: its parent holds the run directory's lock
        return _run(cfg, smoke, resume, worker_seeds=worker_seeds)
    with run_lock(run_dir_of(cfg)):  # one writer per run directory: a second run fails at once, naming this one
        return _run(cfg, smoke, resume, jobs=jobs, original=original)


def _run(
    cfg: ExperimentConfig,
    smoke: bool,
    resume: bool,
    jobs: int = 1,
    original: ExperimentConfig | None = None,
    worker_seeds: list[int] | None = None,
) -> dict:
    if resume and worker_seeds is None:
        check_resumable(run_dir_of(cfg), cfg)
    ctx = open_run(cfg, smoke, resume or worker_seeds is not None)
    probed: dict = {}
    for name in dict.fromkeys(cfg.roles):  # bad set-ups fail here, before any training
        ROLES[name].check(ctx, probed)
    if cfg.teacher.checkpoint:  # a teacher file that does not fit fails here, before the run directory changes
        main_teacher(ctx)
    if worker_seeds is None:
        start_writing(ctx)
    if worker_seeds is not None:  # its parent scores the teacher and writes its row
        attach_teacher(ctx)
        rows: list[dict] = []
    elif jobs > 1 and len(cfg.seeds) > 1:
        rows = [_train_in_workers(ctx, original or cfg, jobs)]
        ctx.resume = True  # what the workers finished is kept, as after an interruption
    else:
        rows = [prepare_teacher(ctx)]
    for seed in cfg.seeds if worker_seeds is None else worker_seeds:
        for name in cfg.roles:
            rows += ROLES[name].run(ctx, seed)
    summary: dict = {}
    if dist.is_main() and worker_seeds is None:
        summary = _summarize(ctx, rows)
    dist.barrier()
    return summary


def _train_in_workers(ctx: RunContext, cfg: ExperimentConfig, jobs: int) -> dict:
    """Start ``jobs`` processes (``kdistill run <resolved config> --worker-seeds ...``), each training its share of
    the seeds; meanwhile score the teacher (its row is returned) and compute what the roles share; wait for all;
    a failed one is a :class:`JobError` (the others are stopped)."""
    if dist.world() > 1:
        raise JobError("--jobs and torchrun do not combine: torchrun already starts one process per rank")
    jobs = min(jobs, len(cfg.seeds))
    threads = max(1, (cfg.threads or os.cpu_count() or 1) // jobs)
    spec = ctx.run_dir / f".jobs-config-{os.getpid()}.yaml"
    atomic_write_text(spec, cfg.model_copy(update={"threads": threads}).to_yaml())
    groups = [cfg.seeds[i::jobs] for i in range(jobs)]
    log(f"jobs: {jobs} worker processes of {threads} thread(s), seeds {groups}")
    base = [sys.executable, "-m", "kdistill", "run", str(spec), *(["--smoke"] if ctx.smoke else [])]
    procs = [subprocess.Popen([*base, "--worker-seeds", ",".join(map(str, g))]) for g in groups]
    try:
        # Meanwhile this process, on one thread (the workers have the cores), scores the teacher (the workers read
        # its predictions back from the shared cache, waiting on its lock while they start up) and computes what
        # the workers' later roles share (the teacher's transfer-set logits: 53 s of one core in the demo).
        # Computed by a worker instead, the logits kept a core idle while the other workers waited for them.
        with torch_threads(1):
            teacher_row = prepare_teacher(ctx)
            for name in dict.fromkeys(cfg.roles):
                ROLES[name].prepare(ctx)
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:  # an interrupted parent stops its workers too
            if p.poll() is None:
                p.terminate()
                p.wait()
        spec.unlink(missing_ok=True)
    failed = [(g, c) for g, c in zip(groups, codes, strict=True) if c != 0]
    if failed:
        raise JobError(
            "--jobs: worker(s) failed: "
            + "; ".join(f"seeds {g} exited with code {c}" for g, c in failed)
            + " (their error is printed above); the students that finished are kept, so --resume continues"
        )
    return teacher_row


def _summarize(ctx: RunContext, rows: list[dict]) -> dict:
    """Deployment figures, ``summary.json`` / ``summary.md`` with what each role says about itself, and the
    HTML report."""
    cfg = ctx.cfg
    assert ctx.teacher is not None
    deploy = deployment(cfg, ctx.teacher.model, ctx.data, rows, ctx.smoke)
    roles = {"teacher": {"label": "teacher", "color": "black", "order": 0}}
    for name in dict.fromkeys(cfg.roles):
        variants = list(dict.fromkeys(r["variant"] for r in rows if r["role"] == name and r.get("variant")))
        roles[name] = ROLES[name].info(cfg, variants)
    found = {
        k: v for k, v in record(ctx.data).items() if k in ("source", "class_names", "counts", "input_shape", "held")
    }
    summary = write_summary(
        ctx.run_dir, cfg.model_dump(mode="json"), rows, roles, smoke=ctx.smoke, deploy=deploy, data=found
    )
    log(f"report: {build_report(ctx.run_dir)}")
    return summary
