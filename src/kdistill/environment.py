"""Where a number was measured: Python, OS, torch, threads, CPU model and kernel path, GPU if any.

Metrics depend on the CPU's kernel path (AVX2, AVX512, ...) and the thread count: the same seeds give the
same metrics on the same CPU kind and may differ by a few tenths of a point on another. Every summary and
benchmark table records this, so that a number always comes with the machine that produced it.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict:
    """This process's machine: Python, OS, torch, threads, CPU model and kernel path, GPU if any."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def machine_line(env: dict | None) -> str:
    """``"Measured on <cpu>, <kernel path>, torch <v>, <n> thread(s)."``, or ``""`` for summaries written
    before :func:`environment` recorded the CPU."""
    env = env or {}
    machine = ", ".join(str(env[k]) for k in ("cpu", "cpu_capability", "cuda_device") if env.get(k))
    return f"Measured on {machine}, torch {env.get('torch')}, {env.get('threads')} thread(s)." if machine else ""


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, the previous count restored after it (even on an error)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
