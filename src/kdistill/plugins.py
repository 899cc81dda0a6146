"""User code named in a config: ``package.module:attribute`` (a model factory, a dataset factory)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def import_callable(path: str, what: str, usage: str) -> Callable[..., Any]:
    """The callable at ``package.module:attr`` (``attr`` may be dotted). Every failure is a ValueError that
    names ``what`` (e.g. "model arch 'x:y'") and says how to fix it; ``usage`` describes the expected form."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what}: {usage}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"{what}: cannot import module {module_name!r} ({e}); make sure it is on PYTHONPATH (run from the "
            "directory that contains it)"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what}: {attr!r} is not callable")
    return obj
