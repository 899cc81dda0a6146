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

from kdistill import dist
from kdistill.config import ExperimentConfig
from kdistill.data.inspect import record
from kdistill.experiment.checks import check_resumable
from kdistill.experiment.context import RunContext, log, open_run, run_dir_of, smoke_config, start_writing
from kdistill.experiment.evaluate import deployment
from kdistill.experiment.roles import ROLES
from kdistill.experiment.teachers import main_teacher, prepare_teacher
from kdistill.lock import run_lock
from kdistill.report.html import build_report
from kdistill.report.summary import write_summary


def run_experiment(cfg: ExperimentConfig, smoke: bool = False, resume: bool = False) -> dict:
    """Train/load the teacher and every (role, seed) model; write the run directory; return the summary.

    ``smoke=True`` runs the same pipeline on a few hundred samples for one epoch. ``resume=True`` continues
    an interrupted run of the same config: finished models are kept (their ``row.json``), an unfinished one
    continues from its ``last.pt`` exactly where it stopped. Under ``torchrun`` every rank runs this
    function; rank 0 alone writes files and returns the summary.
    """
    if smoke:
        cfg = smoke_config(cfg)
    with run_lock(run_dir_of(cfg)):  # one writer per run directory: a second run fails at once, naming this one
        return _run(cfg, smoke, resume)


def _run(cfg: ExperimentConfig, smoke: bool, resume: bool) -> dict:
    if resume:
        check_resumable(run_dir_of(cfg), cfg)
    ctx = open_run(cfg, smoke, resume)
    probed: dict = {}
    for name in dict.fromkeys(cfg.roles):  # bad set-ups fail here, before any training
        ROLES[name].check(ctx, probed)
    if cfg.teacher.checkpoint:  # a teacher file that does not fit fails here, before the run directory changes
        main_teacher(ctx)
    start_writing(ctx)
    rows = [prepare_teacher(ctx)]
    for seed in cfg.seeds:
        for name in cfg.roles:
            rows += ROLES[name].run(ctx, seed)
    summary: dict = {}
    if dist.is_main():
        summary = _summarize(ctx, rows)
    dist.barrier()
    return summary


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
