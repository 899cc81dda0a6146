"""The summary of a regression run: mean ± std over seeds per (budget, role), KD − scratch per budget with the
two-standard-deviation test, and the figures (test RMSE against the label budget; the toy's curves).

Reads what the run wrote (rows, ``curves.json``); computes nothing about models."""

from __future__ import annotations

import html
import json
from pathlib import Path

from kdistill.io import atomic_write_text
from kdistill.report.figures import new_figure, save_figure
from kdistill.report.page import html_page, html_table, md_heading, md_table, mean_std, write_pages

METRICS = ("rmse", "mae", "r2", "rmse_to_teacher")
LABELS = {"scratch": "scratch (labels only)", "kd": "KD", "kd_weighted": "KD, 1/variance-weighted"}


def aggregate_regression(rows: list[dict]) -> list[dict]:
    """One entry per (budget, role) in run order: n, and mean / std (sample, over seeds) of every metric."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        if r["role"] != "teacher":
            groups.setdefault((r["budget"], r["role"]), []).append(r)
    out = []
    for (budget, role), rs in groups.items():
        entry: dict = {"budget": budget, "role": role, "n": len(rs)}
        for m in METRICS:
            entry[m], entry[f"{m}_std"] = mean_std([float(r[m]) for r in rs])
        out.append(entry)
    return out


def kd_gains(agg: list[dict], rows: list[dict]) -> list[dict]:
    """Per budget and distilled role: scratch RMSE − KD RMSE (positive: KD is better), the larger of the two roles'
    standard deviations and whether the gain exceeds twice it; and the per-seed differences (scratch and KD of
    one seed share the labelled rows and the initialization), their sd and the same test on them."""
    by = {(a["budget"], a["role"]): a for a in agg}
    per_seed = {(r["budget"], r["role"], r["seed"]): r["rmse"] for r in rows if r["role"] != "teacher"}
    out = []
    for (budget, role), a in by.items():
        s = by.get((budget, "scratch"))
        if role == "scratch" or s is None:
            continue
        sd = max(a["rmse_std"], s["rmse_std"])
        gain = s["rmse"] - a["rmse"]
        paired = [
            per_seed[(budget, "scratch", k)] - v
            for (b, r, k), v in per_seed.items()
            if b == budget and r == role and (budget, "scratch", k) in per_seed
        ]
        paired_mean, paired_sd = mean_std(paired) if paired else (float("nan"), 0.0)
        out.append(
            {
                "budget": budget,
                "role": role,
                "gain": gain,
                "sd": sd,
                "verdict": _verdict(gain, sd, a["n"]),
                "relative": gain / s["rmse"] if s["rmse"] else float("nan"),
                "paired": paired,
                "paired_sd": paired_sd,
                "paired_verdict": _verdict(paired_mean, paired_sd, len(paired)),
                "seeds": min(a["n"], s["n"]),
            }
        )
    return out


def _verdict(gain: float, sd: float, n: int) -> str:
    if n < 2:
        return "one seed: no sd"
    return "better" if gain > 2 * sd else "worse" if gain < -2 * sd else "within 2 sd"


def _ms(a: dict, m: str, fmt: str = ".4g") -> str:
    return f"{a[m]:{fmt}} ± {a[m + '_std']:{fmt}}" if a["n"] > 1 else f"{a[m]:{fmt}}"


def quality_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    head = ["labels", "student", "test RMSE", "MAE", "R²", "RMSE to teacher", "seeds"]
    t = summary["teacher"]
    rows = [
        [
            str(t["budget"]),
            f"teacher ({t['kind']}, {t['members']} member(s))",
            f"{t['rmse']:.4g}",
            f"{t['mae']:.4g}",
            f"{t['r2']:.3f}",
            "–",
            "–",
        ]
    ]
    for a in summary["aggregate"]:
        rows.append(
            [
                str(a["budget"]),
                LABELS.get(a["role"], a["role"]),
                _ms(a, "rmse"),
                _ms(a, "mae"),
                _ms(a, "r2", ".3f"),
                _ms(a, "rmse_to_teacher"),
                str(a["n"]),
            ]
        )
    return head, rows


def gain_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    head = [
        "labels",
        "student",
        "scratch − KD RMSE",
        "relative",
        "2 × sd",
        "verdict",
        "per seed (paired)",
        "2 × paired sd",
        "paired verdict",
    ]
    rows = [
        [
            str(g["budget"]),
            LABELS.get(g["role"], g["role"]),
            f"{g['gain']:+.4g}",
            f"{100 * g['relative']:+.1f} %",
            f"{2 * g['sd']:.3g}",
            g["verdict"],
            ", ".join(f"{p:+.3g}" for p in g["paired"]),
            f"{2 * g['paired_sd']:.3g}",
            g["paired_verdict"],
        ]
        for g in summary["gains"]
    ]
    return head, rows


def findings(summary: dict) -> list[str]:
    fmt = lambda gs: ", ".join(f"{LABELS.get(g['role'], g['role'])} at {g['budget']} labels" for g in gs)  # noqa: E731
    lines = []
    for key, what in (
        ("verdict", "the larger of the two roles' sd"),
        ("paired_verdict", "the sd of the per-seed differences"),
    ):
        better = [g for g in summary["gains"] if g[key] == "better"]
        worse = [g for g in summary["gains"] if g[key] == "worse"]
        lines.append(f"KD beats scratch by more than 2 × {what}: {fmt(better) or 'nowhere'}.")
        if worse:
            lines.append(f"KD is worse than scratch by more than 2 × {what}: {fmt(worse)}.")
    return lines


def regression_markdown(summary: dict) -> str:
    lines = md_heading(summary, "rows")
    lines += [
        f"Data: {summary['data']['source']}, rows {summary['data']['rows']}. Test metrics in the targets' "
        "own units; mean ± std over seeds.",
        "",
    ]
    lines += md_table(*quality_table(summary)) + [""]
    lines += ["## KD − scratch per label budget", ""] + md_table(*gain_table(summary)) + [""]
    lines += findings(summary) + [""]
    lines += [f"![{f}]({f})" for f in summary.get("figures", [])] + [""]
    lines.append(f"Reproduce: `{summary['command']}`")
    return "\n".join(lines) + "\n"


def regression_html(summary: dict) -> str:
    parts = [f"<h1>{html.escape(summary['config']['name'])}</h1>", html_table(*quality_table(summary))]
    parts += ["<h2>KD − scratch per label budget</h2>", html_table(*gain_table(summary))]
    parts += [f"<p>{html.escape(line)}</p>" for line in findings(summary)]
    parts += [f'<img src="{html.escape(f)}" width="640">' for f in summary.get("figures", [])]
    parts.append(f"<p>Reproduce: <code>{html.escape(summary['command'])}</code></p>")
    return html_page(parts)


def write_regression_summary(run_dir: Path, cfg: dict, rows: list[dict], data: dict, smoke: bool) -> dict:
    """``summary.json``, ``summary.md``, ``report.html`` and the figures of a regression run."""
    agg = aggregate_regression(rows)
    teacher = next(r for r in rows if r["role"] == "teacher")
    summary = {
        "config": cfg,
        "smoke": smoke,
        "data": data,
        "rows": rows,
        "teacher": teacher,
        "aggregate": agg,
        "gains": kd_gains(agg, rows),
    }
    summary["figures"] = draw_regression_figures(run_dir, summary)
    return write_pages(run_dir, summary, regression_markdown, regression_html)


def rebuild_regression_report(run_dir: Path) -> Path:
    """Redraw the figures and rewrite ``summary.md`` / ``report.html`` of a regression run from its
    ``summary.json`` (``kdistill report RUN_DIR``)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["figures"] = draw_regression_figures(run_dir, summary)
    atomic_write_text(run_dir / "summary.md", regression_markdown(summary))
    atomic_write_text(run_dir / "report.html", regression_html(summary))
    return run_dir / "report.html"


def draw_regression_figures(run_dir: Path, summary: dict) -> list[str]:
    """``budgets.png`` (test RMSE against labels per role, ± std, the teacher as a line) and, for the toy,
    ``curves.png`` (the true function, the teacher ± its spread, the first seed's students, the labelled points)
    for the smallest and the largest budget. Returns the file names."""
    fig = new_figure((6, 4))
    ax = fig.add_subplot()
    for role in dict.fromkeys(a["role"] for a in summary["aggregate"]):
        pts = sorted((a["budget"], a["rmse"], a["rmse_std"]) for a in summary["aggregate"] if a["role"] == role)
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            marker="o",
            capsize=3,
            label=LABELS.get(role, role),
        )
    ax.axhline(summary["teacher"]["rmse"], color="black", ls="--", lw=1, label="teacher")
    ax.set_xscale("log")
    budgets = sorted({a["budget"] for a in summary["aggregate"]})
    ax.set_xticks(budgets, [str(b) for b in budgets])  # the budgets themselves, not powers of ten
    ax.minorticks_off()
    ax.set_xlabel("labelled training rows")
    ax.set_ylabel("test RMSE")
    ax.legend()
    save_figure(fig, run_dir / "budgets.png")
    names = ["budgets.png"]
    path = run_dir / "curves.json"
    if path.is_file():
        names.append(_curves_figure(run_dir, json.loads(path.read_text())))
    return names


def _curves_figure(run_dir: Path, curves: dict) -> str:
    budgets = sorted(curves["students"], key=int)
    shown = [budgets[0]] + ([budgets[-1]] if len(budgets) > 1 else [])
    fig = new_figure((6 * len(shown), 4))
    axes = fig.subplots(1, len(shown), squeeze=False)
    x = curves["x"]
    for ax, b in zip(axes[0], shown, strict=True):
        pts = curves["labelled"][b]
        step = max(1, len(pts["x"]) // 300)  # a few hundred dots are enough to see the noise
        size = 30 if len(pts["x"]) <= 50 else 8  # a handful of labels must stand out
        ax.scatter(pts["x"][::step], pts["y"][::step], s=size, color="gray", alpha=0.7, label=f"{b} labelled points")
        ax.plot(x, curves["true"], color="black", lw=1, ls=":", label="true function")
        if "teacher" in curves:
            ax.plot(x, curves["teacher"], color="black", lw=1.5, label="teacher")
            if "teacher_std" in curves:
                lo = [m - 2 * s for m, s in zip(curves["teacher"], curves["teacher_std"], strict=True)]
                hi = [m + 2 * s for m, s in zip(curves["teacher"], curves["teacher_std"], strict=True)]
                ax.fill_between(x, lo, hi, color="black", alpha=0.12, label="teacher ± 2 × spread")
        for role, ys in curves["students"][b].items():
            ax.plot(x, ys, lw=1.5, label=LABELS.get(role, role))
        ax.set_title(f"{b} labels (first seed)")
        ax.set_xlabel("x")
        ax.legend(fontsize=7)
    save_figure(fig, run_dir / "curves.png")
    return "curves.png"
