"""The error every data problem raises, and the label that means "no label"."""

from __future__ import annotations

UNLABELLED = -1  # a label the student must not read (transfer sets): the losses skip such rows


class DataError(RuntimeError):
    """A dataset is missing, truncated or malformed. The message says where and how to fix it."""
