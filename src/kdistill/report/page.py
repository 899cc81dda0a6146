"""Plain tables and a plain page: what the text and encoder summaries print (Markdown) and show (HTML)."""

from __future__ import annotations

import html
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from kdistill.environment import environment
from kdistill.io import atomic_write_text
from kdistill.report.summary import md_text, run_command

CSS = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:3px 8px;border-bottom:1px solid #ddd}"


def mean_std(v: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown lines: the header, a separator (first column left-aligned, the others right), the rows."""
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def md_heading(summary: dict, what: str) -> list[str]:
    """A summary's title (marked when it is a smoke run of a few ``what``) and the config's description."""
    cfg = summary["config"]
    smoke = f" (smoke run: a few {what} and steps, numbers meaningless)" if summary["smoke"] else ""
    lines = [f"# {md_text(cfg['name'])}{smoke}", ""]
    return lines + ([md_text(cfg["description"].strip()), ""] if cfg.get("description") else [])


def html_table(head: list[str], rows: list[list[str]]) -> str:
    out = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    return out + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


def html_page(parts: list[str]) -> str:
    """A standalone UTF-8 page of already-escaped HTML parts."""
    head = f'<!doctype html><html><head><meta charset="utf-8"><style>{CSS}</style></head>'
    return f"{head}<body>{''.join(parts)}</body></html>\n"


def write_pages(run_dir: Path, summary: dict, markdown: Callable[[dict], str], page: Callable[[dict], str]) -> dict:
    """Add the command and the machine to ``summary``, then write ``summary.json``, ``summary.md`` and
    ``report.html`` (each atomically); returns the summary."""
    summary = {**summary, "command": run_command(summary["config"]["name"]), "environment": environment()}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(run_dir / "summary.md", markdown(summary))
    atomic_write_text(run_dir / "report.html", page(summary))
    return summary
