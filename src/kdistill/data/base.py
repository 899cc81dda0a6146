"""What every data source returns, and the error every data problem raises."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNLABELLED = -1  # a label the student must not read (transfer sets): the losses skip such rows


class DataError(RuntimeError):
    """A dataset is missing, truncated or malformed. The message says where and how to fix it."""


@dataclass
class RawData:
    """A dataset as a source reads it: uint8 images ``(N, H, W)`` or ``(N, C, H, W)``, integer labels, class
    names. :func:`kdistill.data.load_data` normalises it and carves the splits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
