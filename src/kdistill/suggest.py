"""What a person most likely meant by a name kdistill does not know: the hint in "unknown key ...; did you mean"."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

# What people type for a key that kdistill names otherwise (synonym -> key); suggest_key tries these first.
SYNONYMS = {
    "temperature": "T",
    "temp": "T",
    "tau": "T",
    "learning_rate": "lr",
    "wd": "weight_decay",
    "bs": "batch_size",
    "batch": "batch_size",
    "epoch": "epochs",
    "seed": "seeds",
    "optim": "optimizer",
    "scheduler": "schedule",
    "lambda": "alpha",
    "arch_kwargs": "kwargs",
}


def suggest_key(name: str, valid: Sequence[str]) -> str | None:
    """The valid key a person most likely meant by ``name``, or None.

    In order: a known synonym (``temperature`` -> ``T``), the same key in another case (``t`` -> ``T``), the only
    valid key that starts with it or that it starts with (``warmup`` -> ``warmup_epochs``), then the closest
    spelling, case ignored (``aplha`` -> ``alpha``).
    """
    low = name.lower()
    by_low = {v.lower(): v for v in valid}
    syn = SYNONYMS.get(low)
    if syn in valid:
        return syn
    if low in by_low:
        return by_low[low]
    if len(low) >= 3:
        prefixed = [v for v in valid if v.lower().startswith(low) or (len(v) >= 3 and low.startswith(v.lower()))]
        if len(prefixed) == 1:
            return prefixed[0]
    close = difflib.get_close_matches(low, list(by_low), n=1, cutoff=0.6)
    return by_low[close[0]] if close else None
