"""Pure loss functions (tensors in, scalar tensor out); :class:`ContrastMemory` is CRD's one stateful piece."""

from kdistill.losses.contrastive import ContrastMemory, crd_loss, crd_nce_loss
from kdistill.losses.encoder import (
    embedding_cosine_loss,
    embedding_mse,
    info_nce,
    masked_mse,
    mean_pool,
    minilm_relation_loss,
    split_heads,
)
from kdistill.losses.features import attention_map, attention_transfer_loss, hint_loss
from kdistill.losses.logits import (
    cross_entropy,
    dist_loss,
    dkd_loss_parts,
    dkd_terms,
    gradient_reversal,
    kd_loss,
    kd_loss_parts,
    label_smoothing_ce,
    learned_temperature_kd,
    logit_standardized_kd,
    soft_target_kl,
    standardize_logits,
    wttm_loss,
)
from kdistill.losses.regression import inverse_variance_weights, regression_kd_parts, regression_loss
from kdistill.losses.relation import pkt_loss, rkd_angle_loss, rkd_distance_loss, similarity_preserving_loss

__all__ = [
    "ContrastMemory",
    "attention_map",
    "attention_transfer_loss",
    "crd_loss",
    "crd_nce_loss",
    "cross_entropy",
    "dist_loss",
    "dkd_loss_parts",
    "dkd_terms",
    "embedding_cosine_loss",
    "gradient_reversal",
    "embedding_mse",
    "hint_loss",
    "info_nce",
    "inverse_variance_weights",
    "kd_loss",
    "kd_loss_parts",
    "label_smoothing_ce",
    "learned_temperature_kd",
    "logit_standardized_kd",
    "masked_mse",
    "mean_pool",
    "minilm_relation_loss",
    "pkt_loss",
    "regression_kd_parts",
    "regression_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_preserving_loss",
    "split_heads",
    "soft_target_kl",
    "standardize_logits",
    "wttm_loss",
]
