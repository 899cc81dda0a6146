"""The summary of a language-model run: test bits per token (mean ± std over seeds) per model, the share of the
teacher-student gap each objective recovers, its distance from scratch in standard deviations, training
tokens per second, and every model's continuation of the same prompts. Reads plain data only."""

from __future__ import annotations

import html
import math
import statistics
from pathlib import Path

from kdistill.environment import machine_line
from kdistill.report.page import html_page, html_table, md_heading, md_table, write_pages


def model_name(row: dict) -> str:
    return f"{row['role']}-{row['variant']}" if row.get("variant") else row["role"]


def _std(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def aggregate_text(rows: list[dict]) -> dict[str, dict]:
    """Per model: bits per token mean/std, perplexity, tokens/s, params, n; then gap recovered and distance from
    scratch (``(scratch - model) / sqrt(std_scratch^2 + std_model^2)``: how many standard deviations apart)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(model_name(r), []).append(r)
    agg: dict[str, dict] = {}
    for name, rs in groups.items():
        bpt = [r["test_bpt"] for r in rs]
        tps = [r["tokens_per_second"] for r in rs if r.get("tokens_per_second")]
        agg[name] = {
            "role": rs[0]["role"],
            "bpt_mean": statistics.fmean(bpt),
            "bpt_std": _std(bpt),
            "ppl_mean": statistics.fmean(r["test_ppl"] for r in rs),
            "tokens_per_second": statistics.fmean(tps) if tps else None,
            "params": rs[0]["params"],
            "n": len(rs),
        }
    teacher, scratch = agg.get("teacher"), agg.get("scratch")
    for a in agg.values():
        if scratch and a is not scratch and a["role"] != "teacher":
            diff = scratch["bpt_mean"] - a["bpt_mean"]
            spread = math.hypot(scratch["bpt_std"], a["bpt_std"])
            a["gain_bpt"] = diff
            a["gain_sigmas"] = diff / spread if spread > 0 else None
            if teacher and scratch["bpt_mean"] != teacher["bpt_mean"]:
                a["gap_recovered"] = diff / (scratch["bpt_mean"] - teacher["bpt_mean"])
            if scratch["tokens_per_second"] and a["tokens_per_second"]:
                a["time_per_token_vs_scratch"] = scratch["tokens_per_second"] / a["tokens_per_second"]
    return agg


def best_objective(agg: dict[str, dict]) -> str | None:
    students = [n for n, a in agg.items() if a["role"] not in ("teacher", "scratch")]
    return min(students, key=lambda n: agg[n]["bpt_mean"]) if students else None


def _fmt(x: float | None, spec: str, missing: str = "–") -> str:
    return missing if x is None else format(x, spec)


def text_table(agg: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "params", "test bits/token", "perplexity", "gain vs scratch", "σ from scratch"]
    head += ["gap recovered", "train tokens/s", "time per token vs scratch"]
    rows = []
    for name, a in agg.items():
        rows.append(
            [
                name,
                f"{a['params']:,}",
                f"{a['bpt_mean']:.4f} ± {a['bpt_std']:.4f}",
                f"{a['ppl_mean']:.3f}",
                _fmt(a.get("gain_bpt"), "+.4f"),
                _fmt(a.get("gain_sigmas"), ".1f"),
                _fmt(100 * a["gap_recovered"], ".1f") + " %" if a.get("gap_recovered") is not None else "–",
                _fmt(a["tokens_per_second"], ",.0f"),
                _fmt(a.get("time_per_token_vs_scratch"), ".2f") + ("×" if a.get("time_per_token_vs_scratch") else ""),
            ]
        )
    return head, rows


def text_markdown(summary: dict) -> str:
    cfg, agg, d = summary["config"], summary["aggregate"], summary["data"]
    lines = md_heading(summary, "blocks")
    lines += [
        f"Corpus {d['source']}: {d['tokenizer']} tokens (vocabulary {d['vocab_size']}), blocks of {d['block']}; "
        f"train {d['tokens']['train']:,} tokens, validation {d['tokens']['val']:,}, test {d['tokens']['test']:,} "
        f"(split by document). Students: {cfg['student']['train']['steps']} steps each, seeds {cfg['seeds']}; KD "
        f"T={cfg['kd']['T']}, alpha={cfg['kd']['alpha']}, teacher top-{cfg['kd']['top_k']} cached.",
        "",
    ]
    head, rows = text_table(agg)
    lines += md_table(head, rows)
    best = summary.get("best")
    if best:
        a = agg[best]
        lines += [
            "",
            f"Best objective: **{best}**, {a['bpt_mean']:.4f} bits/token against scratch's "
            f"{agg['scratch']['bpt_mean']:.4f} ({_fmt(a.get('gain_sigmas'), '.1f')} σ apart)"
            if "scratch" in agg
            else f"Best objective: **{best}**",
        ]
    for name, texts in summary.get("samples", {}).items():
        if name == "prompt":
            continue
        lines += ["", f"**{name}**", ""]
        for p, t in zip(summary["samples"]["prompt"], texts, strict=True):
            lines += ["```", (p + "⟨" + t + "⟩").replace("```", "'''"), "```"]
    lines += ["", f"Reproduce: `{summary['command']}`"]
    if m := machine_line(summary.get("environment")):
        lines += ["", m]
    return "\n".join(lines) + "\n"


def text_html(summary: dict) -> str:
    head, rows = text_table(summary["aggregate"])
    parts = [f"<h1>{html.escape(summary['config']['name'])}</h1>", html_table(head, rows)]
    samples = summary.get("samples", {})
    if samples:
        parts.append("<h2>The same prompts, continued by each model (prompt, then ⟨continuation⟩)</h2>")
        for name, texts in samples.items():
            if name == "prompt":
                continue
            parts.append(f"<h3>{html.escape(name)}</h3>")
            for p, t in zip(samples["prompt"], texts, strict=True):
                parts.append(f"<pre>{html.escape(p)}<b>⟨{html.escape(t)}⟩</b></pre>")  # prompt, then continuation
    parts.append(f"<p>Reproduce: <code>{html.escape(summary['command'])}</code></p>")
    return html_page(parts)


def write_text_summary(
    run_dir: Path, cfg: dict, rows: list[dict], data: dict, samples: dict[str, list[str]], smoke: bool
) -> dict:
    agg = aggregate_text(rows)
    summary = {"config": cfg, "smoke": smoke, "data": data, "rows": rows, "aggregate": agg}
    summary |= {"best": best_objective(agg), "samples": samples}
    return write_pages(run_dir, summary, text_markdown, text_html)
