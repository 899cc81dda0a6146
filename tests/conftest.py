"""Shared test settings and tiny fixtures.

The test machine has two CPU cores and other work running on it: one thread, tiny tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdistill.data import Split
from tests.helpers import make_bn_teacher

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> None:
    # pipeline tests call torch.set_num_threads(cfg.threads or cpu_count); put it back for every test.
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def bn_teacher() -> nn.Module:
    return make_bn_teacher()


@pytest.fixture
def sparse_split() -> Split:
    """20 samples of 6 features whose sample indices are sparse and unordered (not 0..N-1)."""
    g = torch.Generator().manual_seed(7)
    n = 20
    index = torch.randperm(100, generator=g)[:n] * 3 + 1  # values in 1..298, none consecutive by design
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return Split(x, y, index)
