"""FitNets hints and attention transfer (kdistill.losses.features) against hand-computed values."""

from __future__ import annotations

import math
import re

import pytest
import torch

from kdistill.losses import (
    attention_map,
    attention_transfer_loss,
    hint_loss,
)
from tests.losses.reference import D, close

# ============================================================================= hint / attention transfer


def test_hint_loss_hand_computed() -> None:
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D)
    t = torch.tensor([[0.0, 2.0], [1.0, 4.0]], dtype=D)
    # squared differences 1, 0, 4, 0 -> mean 5 / 4
    close(hint_loss(s, t), 1.25)


def test_hint_loss_needs_exact_shape_and_detaches_teacher() -> None:
    with pytest.raises(ValueError, match=re.escape("student (2, 3, 4, 4), teacher (2, 5, 4, 4)")):
        hint_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    s = torch.randn(2, 3, dtype=D, requires_grad=True)
    t = torch.randn(2, 3, dtype=D, requires_grad=True)
    hint_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


# Student: 2 channels on a 2x2 grid, teacher: 1 channel (AT needs no channel adapter).
#   c0 = [[1, 2], [0, 0]], c1 = [[1, 0], [2, 0]]
#   p=2: mean_c f^2 = [(1+1)/2, (4+0)/2, (0+4)/2, 0] = [1, 2, 2, 0], norm sqrt(1+4+4) = 3 -> [1/3, 2/3, 2/3, 0]
#   p=1: mean_c |f| = [1, 1, 1, 0], norm sqrt(3) -> [1, 1, 1, 0] / sqrt(3)
AT_STUDENT = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[1.0, 0.0], [2.0, 0.0]]]], dtype=D)
#   teacher [[0, 0], [0, 3]]: map [0, 0, 0, 9] -> [0, 0, 0, 1]
AT_TEACHER = torch.tensor([[[[0.0, 0.0], [0.0, 3.0]]]], dtype=D)


def test_attention_map_hand_computed() -> None:
    torch.testing.assert_close(attention_map(AT_STUDENT), torch.tensor([[1 / 3, 2 / 3, 2 / 3, 0.0]], dtype=D))
    torch.testing.assert_close(attention_map(AT_STUDENT, p=1), torch.tensor([[1, 1, 1, 0.0]], dtype=D) / math.sqrt(3))
    torch.testing.assert_close(attention_map(AT_TEACHER), torch.tensor([[0, 0, 0, 1.0]], dtype=D))


def test_attention_transfer_hand_computed() -> None:
    # diff [1/3, 2/3, 2/3, -1] -> squares 1/9 + 4/9 + 4/9 + 1 = 2, mean over 1 sample x 4 positions = 0.5
    close(attention_transfer_loss(AT_STUDENT, AT_TEACHER), 0.5)
    # Batch of two: the teacher gets a zero second channel (map [0, 0, 0, 9/2], normalised unchanged), and
    # its second sample is the student's own (contributes 0) -> 2 / (2 samples x 4 positions) = 0.25
    s = torch.cat([AT_STUDENT, AT_STUDENT])
    t = torch.cat([torch.cat([AT_TEACHER, torch.zeros_like(AT_TEACHER)], dim=1), AT_STUDENT])
    close(attention_transfer_loss(s, t), 0.25)


def test_attention_transfer_pools_larger_map() -> None:
    # A 4x4 one-channel teacher whose 2x2 blocks have mean f^2 = [1, 2, 2, 0], i.e. the student's map:
    #   block00 [[2,0],[0,0]] -> 4/4 = 1, block01 [[2,2],[0,0]] -> 8/4 = 2, block10 [[0,0],[2,2]] -> 2, block11 0
    t = torch.tensor(
        [[[[2, 0, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 0, 0]]]],
        dtype=D,
    )
    assert attention_transfer_loss(AT_STUDENT, t).item() < 1e-15
    assert attention_transfer_loss(t, AT_STUDENT).item() < 1e-15  # pooling works in either direction
    # against the 2x2 teacher above, pooling the 4x4 map gives the hand value 0.5 again
    close(attention_transfer_loss(t, AT_TEACHER), 0.5)


def test_attention_transfer_scale_invariant_and_zero_on_equal_maps(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, 5, 5, generator=gen, dtype=D)
    t = torch.randn(3, 7, 5, 5, generator=gen, dtype=D)
    base = attention_transfer_loss(s, t)
    assert base.item() > 1e-4
    torch.testing.assert_close(attention_transfer_loss(s * 10.0, t * 0.1), base)
    assert attention_transfer_loss(s, s.repeat(1, 2, 1, 1)).item() < 1e-30


def test_attention_transfer_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 3, 3, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(2, 2, 3, 3, generator=gen, dtype=D)
    assert torch.autograd.gradcheck(lambda x: attention_transfer_loss(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: attention_transfer_loss(x, t, p=3.0), (s,))


def test_attention_bad_arguments() -> None:
    with pytest.raises(ValueError, match="p must be"):
        attention_map(AT_STUDENT, p=0)
    with pytest.raises(ValueError, match=re.escape("student (2, 3), teacher (2, 3)")):
        attention_transfer_loss(torch.zeros(2, 3), torch.zeros(2, 3))
