"""Left-out classes (kdistill.left_out): shifting their logits, the label-free shift, accuracy on them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdistill.left_out import label_free_shift, shift_logits
from kdistill.metrics import class_accuracy


def test_shift_and_class_accuracy_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 2.5], [1.0, 0.0, 0.5]])
    labels = torch.tensor([0, 2, 2])
    assert class_accuracy(logits, labels, [2]) == 0.0  # both class-2 rows predicted otherwise
    shifted = shift_logits(logits, [2], 1.0)
    assert shifted[:, 2].tolist() == [1.0, 3.5, 1.5] and logits[1, 2] == 2.5  # a copy
    assert class_accuracy(shifted, labels, [2]) == 1.0
    assert class_accuracy(shifted, labels, [0, 2]) == 1.0  # row 0 is [2, 1, 1]: still class 0
    assert torch.isnan(torch.tensor(class_accuracy(logits, labels, [1])))


def test_label_free_shift_matches_the_teachers_mean_probability() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(200, 5, generator=g) * 2
    student = teacher + torch.randn(200, 5, generator=g) * 0.3
    student[:, 3] -= 4.0  # the student under-predicts class 3, as after leaving it out
    b = label_free_shift(student, teacher, 3)
    p_t = F.softmax(teacher, dim=1)[:, 3].mean()
    p_s = F.softmax(shift_logits(student, [3], b), dim=1)[:, 3].mean()
    assert abs(float(p_s - p_t)) < 1e-6
    assert 3.0 < b < 5.0  # close to the 4.0 that was taken away
    with pytest.raises(ValueError, match="out of range"):
        label_free_shift(student, teacher, 7)
