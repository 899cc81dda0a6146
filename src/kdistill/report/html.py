"""One self-contained HTML report per run: ``<run>/report.html`` with its PNGs beside it.

Everything is drawn from the run's files (``summary.json``, ``*/metrics.jsonl``, ``*/predictions.pt``,
``sweep.json``), never from logs, so ``kdistill report RUN_DIR`` rebuilds it at any time. The page has
no script, no external stylesheet, font or image: it opens offline, and it only links images that
were written.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from kdistill.environment import machine_line
from kdistill.io import atomic_copy, atomic_write_text, safe_load
from kdistill.metrics import DEFAULT_TEMPERATURES, dark_knowledge_matrix, percent
from kdistill.report.figures import (
    plot_curves,
    plot_dark_knowledge,
    plot_entropy_vs_T,
    plot_reliability,
    plot_soft_targets,
)
from kdistill.report.page import html_table
from kdistill.report.summary import data_line, deploy_table

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #444; font-size: 0.95em; margin: 0.3em 0 1em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _label(summary: dict, key: str) -> str:
    """How a row group (``kd``, ``dml/peer0``) is named on the page: its role's own label, and the variant."""
    role, _, variant = key.partition("/")
    label = summary.get("roles", {}).get(role, {}).get("label", role)
    return f"{label} {variant}" if variant else label


def _mean_std(a: dict, key: str, pct: bool = True, digits: int = 4) -> str:
    if f"{key}_mean" not in a:
        return "–"
    m, s = a[f"{key}_mean"], a.get(f"{key}_std", 0.0)
    return f"{percent(m)} ± {percent(s)}" if pct else f"{m:.{digits}f} ± {s:.{digits}f}"


def _figure(run_dir: Path, name: str, title: str, note: str) -> str:
    if not (run_dir / name).is_file():
        return ""
    return (
        f'<h2>{html.escape(title)}</h2><img src="{html.escape(name)}" alt="{html.escape(title)}">'
        f'<p class="note">{note}</p>'
    )


def draw_figures(run_dir: Path, summary: dict) -> list[str]:
    """Write the report's PNGs into ``run_dir`` from its files; returns the names written."""
    written: list[str] = []
    colors = {role: info.get("color", "gray") for role, info in summary.get("roles", {}).items()}
    if plot_curves(run_dir, run_dir / "curves.png", colors):
        written.append("curves.png")
    pred_path = run_dir / "teacher" / "predictions.pt"
    if pred_path.is_file():
        p = safe_load(pred_path)
        names, rows = p["class_names"], p["sample_rows"][:6]
        plot_soft_targets(
            p["test_logits"][rows],
            p["test_labels"][rows],
            names,
            run_dir / "soft_targets.png",
            images=p["sample_images"][: len(rows)],
        )
        plot_entropy_vs_T(p["val_logits"], run_dir / "entropy_vs_T.png")
        T = float(summary["config"]["kd"]["T"])
        matrix = dark_knowledge_matrix(p["val_logits"], p["val_labels"], len(names), T)
        plot_dark_knowledge(matrix, names, T, run_dir / "dark_knowledge.png")
        written += ["soft_targets.png", "entropy_vs_T.png", "dark_knowledge.png"]
        curves = {}
        for role in ("scratch", "label_smoothing", "kd"):
            first = sorted(run_dir.glob(f"{role}-seed*/predictions.pt"))
            if first:
                logits = safe_load(first[0])["test_logits"]
                curves[f"{role} ({first[0].parent.name.split('-')[-1]})"] = (logits.softmax(1), p["test_labels"])
        if curves:
            plot_reliability(curves, run_dir / "reliability.png")
            written.append("reliability.png")
    sweep_png = _find_sweep(run_dir, summary)
    if sweep_png is not None:
        if sweep_png.parent != run_dir:
            atomic_copy(sweep_png, run_dir / "sweep.png")
        written.append("sweep.png")
    return written


def _find_sweep(run_dir: Path, summary: dict) -> Path | None:
    """A sweep of this config: in the run directory itself or in ``<output_dir>/<name>-sweep/``."""
    for cand in (run_dir / "sweep.png", run_dir.parent / f"{summary['config']['name']}-sweep" / "sweep.png"):
        if cand.is_file():
            return cand
    return None


def build_report(run_dir: str | Path) -> Path:
    """(Re)build ``run_dir/report.html`` and its figures from the run's files (a ``toy.png`` beside them,
    drawn by ``kdistill report --toy``, is shown too)."""
    run_dir = Path(run_dir)
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a kdistill run directory (no summary.json); give runs/<name>")
    summary = json.loads(summary_file.read_text())
    draw_figures(run_dir, summary)
    atomic_write_text(run_dir / "report.html", render(run_dir, summary))
    return run_dir / "report.html"


# The page's figures, in order: (file, title, note). Each is shown when its file exists: draw_figures writes
# most of them, `kdistill report --toy` the toy, `kdistill sweep` the sweep. {T} and {temps} are filled in.
FIGURES = [
    (
        "curves.png",
        "Training curves",
        "Validation accuracy and training loss per epoch for every model, read from each model's metrics.jsonl. "
        "The weights of the best validation epoch are the ones tested.",
    ),
    (
        "soft_targets.png",
        "Soft targets at several temperatures",
        "The teacher's softmax for one test image of each class at T = {temps}. At T = 1 it is nearly one-hot; "
        "higher temperatures lift the small probabilities of the wrong classes, which say which classes look alike "
        "— the information a one-hot label does not carry.",
    ),
    (
        "entropy_vs_T.png",
        "Entropy of the soft targets against T",
        "How much the soft targets spread over the classes (validation images): from almost no entropy at low T to "
        "the uniform distribution's log C at high T, where they carry no information any more.",
    ),
    (
        "dark_knowledge.png",
        "Dark knowledge at T = {T}",
        "Row i is the teacher's mean soft target over validation images of class i. The right panel hides the "
        "diagonal: what remains is the teacher's knowledge of which classes resemble which (Hinton's "
        "\u201cdark knowledge\u201d).",
    ),
    (
        "reliability.png",
        "Calibration: scratch, label smoothing and KD",
        "Reliability diagrams on the test set for the first seed of each student: accuracy per confidence bin "
        "against the diagonal of perfect calibration, with the expected calibration error (ECE). Label smoothing "
        "softens every target the same way; KD softens them by the teacher's judgement.",
    ),
    (
        "sweep.png",
        "Sweep",
        "Validation and test accuracy of the KD student for each grid point of the sweep of this config. The "
        "winner is chosen on validation accuracy only.",
    ),
    (
        "toy.png",
        "The solution space, drawn (2-D toy)",
        "Decision regions of a big teacher, a tiny student trained alone and the same tiny student distilled "
        "from the teacher, on two-dimensional spirals: the soft targets pull the small model toward the "
        "teacher's solution.",
    ),
]


def render(run_dir: Path, summary: dict) -> str:
    """The page: what was run, the results table, left-out classes, deployment, then every figure present."""
    cfg = summary["config"]
    parts = [*_header(summary), *_results(summary), _left_out_html(summary), _deployment(summary)]
    fill = {"T": cfg["kd"]["T"], "temps": ", ".join(f"{t:g}" for t in DEFAULT_TEMPERATURES)}
    parts += [_figure(run_dir, name, title.format(**fill), note.format(**fill)) for name, title, note in FIGURES]
    body = "\n".join(p for p in parts if p)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(cfg["name"])}'
        f" — kdistill report</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _header(summary: dict) -> list[str]:
    cfg = summary["config"]
    parts = [f"<h1>{html.escape(cfg['name'])}</h1>"]
    if summary.get("smoke"):
        parts.append("<p><b>Smoke run:</b> a few hundred images, one epoch. The numbers mean nothing.</p>")
    if cfg.get("description"):
        parts.append(f"<p>{html.escape(cfg['description'].strip())}</p>")
    parts.append(
        f'<p class="note">Dataset <code>{html.escape(cfg["data"]["name"])}</code>; teacher '
        f"<code>{html.escape(cfg['teacher']['model']['arch'])}</code>, student "
        f"<code>{html.escape(cfg['student']['model']['arch'])}</code>; KD T = {cfg['kd']['T']}, α = "
        f"{cfg['kd']['alpha']}; seeds {html.escape(str(cfg['seeds']))}. Reproduce: "
        f"<code>{html.escape(summary.get('command', ''))}</code> "
        + html.escape(machine_line(summary.get("environment")))
        + "</p>"
    )
    if line := data_line(summary):
        parts.append(f'<p class="note">{html.escape(line)}</p>')
    return parts


def _results(summary: dict) -> list[str]:
    """The table of every role (and variant), mean ± std over seeds, and the derived differences."""
    agg, d = summary["aggregate"], summary["derived"]
    rows = [
        [
            _label(summary, role),
            f"{int(a['params']):,}",
            _mean_std(a, "test_acc"),
            f"{a['test_errors_mean']:.0f}",
            _mean_std(a, "test_nll", pct=False),
            _mean_std(a, "test_ece"),
            f"{a['train_seconds_mean']:.1f}",
            str(int(a["n"])),
        ]
        for role, a in agg.items()
    ]
    parts = ["<h2>Results (test set, mean ± std over seeds)</h2>"]
    parts.append(html_table(["model", "params", "accuracy %", "errors", "NLL", "ECE %", "train s", "n"], rows))
    bullets = []
    if d.get("kd_minus_scratch") is not None:
        bullets.append(f"KD − scratch: <b>{100 * d['kd_minus_scratch']:+.2f} points</b> of test accuracy.")
    if d.get("label_smoothing_minus_scratch") is not None:
        bullets.append(f"Label smoothing − scratch: {100 * d['label_smoothing_minus_scratch']:+.2f} points.")
    if d.get("gap_recovered") is not None:
        bullets.append(f"KD recovers {100 * d['gap_recovered']:.0f} % of the teacher–student gap.")
    if bullets:
        parts.append("<ul>" + "".join(f"<li>{b}</li>" for b in bullets) + "</ul>")
    return parts


def _deployment(summary: dict) -> str:
    dep = deploy_table(summary)
    if dep is None:
        return ""
    threads = summary["deploy"]["teacher"].get("threads", 1)
    return (
        "<h2>Deployment: what the student saves</h2>" + html_table(*dep) + f'<p class="note">CPU, {threads} '
        "thread(s), median of repeated forward passes after warm-up, teacher and student timed in the "
        "same process. FLOPs from PyTorch's FLOP counter (a multiply-add counts 2).</p>"
    )


def _left_out_html(summary: dict) -> str:
    agg, cfg = summary["aggregate"], summary["config"]
    have = [(r, a) for r, a in agg.items() if "left_out_acc_mean" in a]
    if not have:
        return ""
    head = ["model", "left-out classes %", "overall %", "label-free shift: left-out %", "label-free: overall %"]
    fixed: Any = cfg["kd"].get("bias_shift")
    if fixed is not None:
        head += [f"shift +{fixed:g}: left-out %", f"shift +{fixed:g}: overall %"]
    rows = []
    for role, a in have:
        row = [
            _label(summary, role),
            _mean_std(a, "left_out_acc"),
            _mean_std(a, "test_acc"),
            _mean_std(a, "label_free_left_out_acc"),
            _mean_std(a, "label_free_test_acc"),
        ]
        if fixed is not None:
            row += [_mean_std(a, "fixed_shift_left_out_acc"), _mean_std(a, "fixed_shift_test_acc")]
        rows.append(row)
    classes = html.escape(str(cfg["kd"]["exclude_classes"]))
    return (
        f"<h2>Classes left out of the transfer set: {classes}</h2>"
        + html_table(head, rows)
        + '<p class="note">No student saw a training image of these classes; the teacher did. The KD student '
        "learns about them only from the soft targets of other images. The label-free correction raises their "
        "logits until the student's mean predicted probability of each on the validation images (pixels only, "
        "no labels) equals the teacher's; no test label is used to choose any shift.</p>"
    )
