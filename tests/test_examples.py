"""The examples run (briefly) and distill: users copy them, so they must not rot."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_own_layers_example_runs() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import own_layers

        result = own_layers.main(epochs=2)
    finally:
        sys.path.remove(str(EXAMPLES))
    assert result["teacher"] > 0.5 and result["student"] > 0.3  # learning happened; numbers in the README
