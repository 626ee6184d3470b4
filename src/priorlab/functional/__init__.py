"""Pure functions by topic (losses, penalties): no training-loop knowledge."""

from priorlab.functional.coteaching import coteaching_loss, forget_rate_schedule
from priorlab.functional.contrastive import spectral_contrastive_loss, supcon_loss
from priorlab.functional.distill import distillation_loss
from priorlab.functional.elr import elr_loss, elr_regularizer, elr_update_targets
from priorlab.functional.gg_prior import (
    backslash_penalty,
    deepshape_,
    estimate_gg_shape,
    gg_init_,
    prune_smallest_,
)
from priorlab.functional.pskd import pskd_loss, pskd_targets
from priorlab.functional.rrcm import info_nce, noise_consistency_loss, rrcm_pretrain_loss

__all__ = [
    "coteaching_loss",
    "forget_rate_schedule",
    "pskd_loss",
    "pskd_targets",
    "spectral_contrastive_loss",
    "supcon_loss",
    "distillation_loss",
    "elr_loss",
    "elr_regularizer",
    "elr_update_targets",
    "backslash_penalty",
    "deepshape_",
    "estimate_gg_shape",
    "gg_init_",
    "prune_smallest_",
    "info_nce",
    "noise_consistency_loss",
    "rrcm_pretrain_loss",
]
