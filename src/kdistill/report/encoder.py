"""The summary of a sentence-encoder run: per student size and role, the mean cosine with the teacher and the
neighbour agreement on held-out sentences (mean ± std over seeds); params, FLOPs and latency of the teacher and
each student; the goal check (at least 3× faster at batch 1, neighbour agreement ≥ 0.8 and cosine ≥ 0.9); the
ONNX parity. Reads plain data only."""

from __future__ import annotations

import html
import statistics
from pathlib import Path

from kdistill.environment import machine_line
from kdistill.report.page import html_page, html_table, md_heading, md_table, mean_std, write_pages

GOAL = {"speedup_b1": 3.0, "agreement": 0.8, "cos": 0.9}
METRICS = ("cos", "cos_map", "agreement")


def aggregate_encoder(rows: list[dict]) -> dict[str, dict]:
    """``"<student>/<role>"`` -> params, n, train seconds and ``<metric>_mean`` / ``<metric>_std`` for each metric
    that every seed has."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        key = "teacher" if r["role"] == "teacher" else f"{r['student']}/{r['role']}"
        groups.setdefault(key, []).append(r)
    agg = {}
    for key, rs in groups.items():
        a = {"student": rs[0]["student"], "role": rs[0]["role"], "params": rs[0]["params"], "n": len(rs)}
        a["shape"] = f"{rs[0]['layers']} × {rs[0]['width']}"
        for m in METRICS:
            vals = [r[m] for r in rs if r.get(m) is not None]
            if len(vals) == len(rs):
                a[f"{m}_mean"], a[f"{m}_std"] = mean_std(vals)
        secs = [r["train_seconds"] for r in rs if r.get("train_seconds")]
        a["train_seconds"] = statistics.fmean(secs) if secs else None
        agg[key] = a
    return agg


def speedups(teacher: dict, student: dict) -> dict[str, float]:
    """``latency_ms_b<B>`` -> how many times faster than the teacher the student is at batch B."""
    return {k: teacher[k] / student[k] for k in teacher if k.startswith("latency_ms_b") and student.get(k)}


SERVED = (" onnx", " onnx-int8")  # name endings of the copies run by onnxruntime (eval.onnxruntime)


def reference(figs: dict[str, dict], name: str) -> dict:
    """The teacher figures a model's speed-up is counted against: the teacher in onnxruntime for a copy run by
    onnxruntime (the runtime speeds the teacher up as much, so it must not count for the student), else the
    teacher as shipped (float32, PyTorch)."""
    if name.endswith(SERVED) and "teacher onnx" in figs:
        return figs["teacher onnx"]
    return figs.get("teacher", {})


def goal_checks(agg: dict[str, dict], deploy: dict) -> dict[str, dict]:
    """Per student with a kd row: its speed-up over the teacher (:func:`reference`) and whether the issue's goal
    holds."""
    figs = deploy.get("figures", {})
    out = {}
    for a in agg.values():
        if a["role"] != "kd" or a["student"] not in figs:
            continue
        speed = speedups(reference(figs, a["student"]), figs[a["student"]])
        cos = a.get("cos_mean", a.get("cos_map_mean"))
        b1 = speed.get("latency_ms_b1")
        met = (
            b1 is not None
            and b1 >= GOAL["speedup_b1"]
            and a["agreement_mean"] >= GOAL["agreement"]
            and cos >= GOAL["cos"]
        )
        scratch = agg.get(f"{a['student']}/scratch")
        out[a["student"]] = {
            "speedup": {k.replace("latency_ms_", ""): v for k, v in speed.items()},
            "agreement": a["agreement_mean"],
            "cos": cos,
            "met": met,
            "agreement_minus_scratch": a["agreement_mean"] - scratch["agreement_mean"] if scratch else None,
        }
    return out


def _ms(a: dict, m: str) -> str:
    return f"{a[m + '_mean']:.4f} ± {a[m + '_std']:.4f}" if m + "_mean" in a else "–"


def quality_table(agg: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "role", "layers × width", "params", "cosine", "cosine (linear map)", "neighbour agreement"]
    head += ["seeds", "train s"]
    rows = []
    for a in agg.values():
        secs = a.get("train_seconds")
        rows.append(
            [a["student"], a["role"], a["shape"], f"{a['params']:,}", _ms(a, "cos"), _ms(a, "cos_map")]
            + [_ms(a, "agreement"), str(a["n"]), f"{secs:.0f}" if secs else "–"]
        )
    return head, rows


def deploy_table(deploy: dict) -> tuple[list[str], list[list[str]]]:
    figs = deploy.get("figures", {})
    if not figs:
        return [], []
    teacher = figs["teacher"]
    lat = [k for k in teacher if k.startswith("latency_ms_b")]
    head = ["model", "params", "MFLOPs / sentence", "weights MB"]
    head += [f"ms at batch {k.removeprefix('latency_ms_b')}" for k in lat]
    head += [f"× faster at batch {k.removeprefix('latency_ms_b')}" for k in lat]
    rows = []
    for name, f in figs.items():
        row = [name, f"{f['params']:,}", f"{f['flops_per_sample'] / 1e6:,.1f}", f"{f['weights_bytes'] / 2**20:.1f}"]
        fast = speedups(reference(figs, name), f)
        row += [f"{f[k]:.2f}" for k in lat] + [f"{fast[k]:.2f}" for k in lat]
        rows.append(row)
    return head, rows


def _steps(rows: list[dict]) -> str:
    """The optimizer steps the trained students took (``train.steps`` rounded up to whole epochs)."""
    taken = sorted({r["steps"] for r in rows if r.get("steps")})
    return " / ".join(f"{n:,}" for n in taken) if taken else "0"


def encoder_markdown(summary: dict) -> str:
    cfg, d = summary["config"], summary["data"]
    lines = md_heading(summary, "sentences")
    t = d.get("transfer")
    more = f", of them {t['sentences']:,} from the transfer source ({t['source']}, training only)" if t else ""
    if d.get("augmented"):
        more += f", {d['augmented']:,} variants of the corpus' training sentences (augment, training only)"
    lines += [
        f"Teacher `{d['teacher_dir']}`. Sentences ({d['source']}): train {d['sentences']['train']:,}{more}, validation "
        f"{d['sentences']['val']:,}, test {d['sentences']['test']:,}; median {d['median_tokens']['test']:.0f} tokens; "
        f"truncated at {d['max_length']} tokens: {d['truncated']}. Students: {_steps(summary['rows'])} steps of "
        f"{cfg['train']['batch_size']} sentences, seeds {cfg['seeds']}; neighbour agreement: top-{cfg['eval']['k']} "
        f"of {cfg['eval']['queries']} test queries among all {d['sentences']['test']:,} test sentences.",
        "",
    ]
    lines += md_table(*quality_table(summary["aggregate"]))
    lines += [
        "",
        "Roles: `init` is the student as initialised (no training), `scratch` trains it without the teacher "
        "(SimCSE on the same sentences, same steps), `kd` distils the teacher. Cosine: in the student's own space "
        "(– when its width differs and it has no head); linear map: after the least-squares map from the student's "
        "embeddings of the training sentences to the teacher's.",
    ]
    if any(r["student"].endswith(" int8") for r in summary["rows"]):
        smooth = cfg["eval"].get("int8_smooth")
        lines[-1] += (
            " Models named `… int8`: the first seed's model (or the teacher) with every Linear dynamically "
            "quantised to int8, one weight scale per output row, the Linears that read one input (query, key, "
            "value) fused into one (`eval.int8`)"
            + (
                f", after SmoothQuant of strength {smooth} calibrated on {cfg['eval']['int8_calibration']} "
                "training sentences (`eval.int8_smooth`)"
                if smooth is not None
                else ""
            )
            + ", scored against the float32 teacher; their params and FLOPs are the float model's."
        )
    dh, dr = deploy_table(summary["deploy"])
    if dr:
        dep = summary["deploy"]
        lines += ["", f"Deployment (1 thread, {dep['tokens']} tokens per sentence, timed together):", ""]
        lines += md_table(dh, dr)
        if served := served_note(dep["figures"], cfg["eval"].get("int8_smooth")):
            lines += ["", served]
    for line in findings(summary):
        lines += ["", line]
    lines += ["", f"Reproduce: `{summary['command']}`"]
    if m := machine_line(summary.get("environment")):
        lines += ["", m]
    return "\n".join(lines) + "\n"


def served_note(figs: dict[str, dict], smooth: float | None) -> str | None:
    """What the onnxruntime rows are (``eval.onnxruntime``), with the runtime's own gain on the teacher."""
    if "teacher onnx" not in figs:
        return None
    gain = speedups(figs["teacher"], figs["teacher onnx"])
    b = ", ".join(f"{v:.2f}× at batch {k.removeprefix('latency_ms_b')}" for k, v in gain.items())
    return (
        "Models named `… onnx` are exported to ONNX and run by onnxruntime (1 thread); `… onnx-int8` are their "
        "copies dynamically quantised by onnxruntime (int8 weights, one scale per output row"
        + (f", after SmoothQuant of strength {smooth}" if smooth is not None else "")
        + ", scored against the float32 teacher). Their × faster is against the teacher in onnxruntime (`teacher "
        f"onnx`), which the runtime alone makes {b} faster than in PyTorch: the runtime's gain is the teacher's too."
    )


def findings(summary: dict) -> list[str]:
    """One line per student with a kd row (speed-up, agreement, cosine, the goal), one per ONNX export."""
    want = f"≥ {GOAL['speedup_b1']:g}×, ≥ {GOAL['agreement']:g}, ≥ {GOAL['cos']:g}"
    out = []
    for name, g in summary.get("goals", {}).items():
        gain = g.get("agreement_minus_scratch")
        out.append(
            f"{name}: {g['speedup'].get('b1', float('nan')):.2f}× faster at batch 1, neighbour agreement "
            f"{g['agreement']:.3f}, cosine {g['cos']:.3f} (goal {'met' if g['met'] else 'not met'}: {want})"
            + (f"; agreement {gain:+.3f} over its scratch row" if gain is not None else "")
        )
    for e in summary.get("exports", {}).values():
        out.append(f"ONNX {e['path']}: max |difference| {e['max_abs_diff']:.2e} vs PyTorch in {e['runtime']}")
    return out


def encoder_html(summary: dict) -> str:
    parts = [f"<h1>{html.escape(summary['config']['name'])}</h1>", html_table(*quality_table(summary["aggregate"]))]
    dh, dr = deploy_table(summary["deploy"])
    if dr:
        parts += ["<h2>Deployment</h2>", html_table(dh, dr)]
        if served := served_note(summary["deploy"]["figures"], summary["config"]["eval"].get("int8_smooth")):
            parts.append(f"<p>{html.escape(served)}</p>")
    parts += [f"<p>{html.escape(line)}</p>" for line in findings(summary)]
    parts.append(f"<p>Reproduce: <code>{html.escape(summary['command'])}</code></p>")
    return html_page(parts)


def write_encoder_summary(
    run_dir: Path, cfg: dict, rows: list[dict], data: dict, deploy: dict, exports: dict, smoke: bool
) -> dict:
    agg = aggregate_encoder(rows)
    summary = {"config": cfg, "smoke": smoke, "data": data, "rows": rows, "aggregate": agg, "deploy": deploy}
    summary |= {"goals": goal_checks(agg, deploy), "exports": exports}
    return write_pages(run_dir, summary, encoder_markdown, encoder_html)
