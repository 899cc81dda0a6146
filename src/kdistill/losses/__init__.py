"""Pure loss functions (tensors in, scalar tensor out)."""

from kdistill.losses.logits import (
    cross_entropy,
    kd_loss,
    kd_loss_parts,
    label_smoothing_ce,
    soft_target_kl,
)

__all__ = ["cross_entropy", "kd_loss", "kd_loss_parts", "label_smoothing_ce", "soft_target_kl"]
