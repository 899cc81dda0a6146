"""Every pair loss checks its arguments the same way (kdistill.losses.checks)."""

from __future__ import annotations

import pytest
import torch

from kdistill.losses import (
    attention_transfer_loss,
    dist_loss,
    dkd_loss_parts,
    hint_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)

# ============================================================================= bad shapes, for every loss


PAIR_LOSSES = {
    "hint": lambda s, t: hint_loss(s, t),
    "at": lambda s, t: attention_transfer_loss(s, t),
    "sp": lambda s, t: similarity_preserving_loss(s, t),
    "rkd_d": lambda s, t: rkd_distance_loss(s, t),
    "rkd_a": lambda s, t: rkd_angle_loss(s, t),
    "pkt": lambda s, t: pkt_loss(s, t),
    "dkd": lambda s, t: dkd_loss_parts(s.flatten(1), t.flatten(1), torch.zeros(4, dtype=torch.long), 4.0, 1.0, 8.0),
    "dist": lambda s, t: dist_loss(s.flatten(1), t.flatten(1)),
}


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_mismatched_batch_sizes_raise_with_both_shapes(name: str) -> None:
    s, t = torch.zeros(4, 3, 2, 2), torch.zeros(5, 3, 2, 2)
    with pytest.raises(ValueError) as err:
        PAIR_LOSSES[name](s, t)
    msg = str(err.value)
    assert "(4, " in msg and "(5, " in msg, msg
