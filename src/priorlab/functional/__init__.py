"""Pure functions by topic (losses, penalties): no training-loop knowledge."""

from priorlab.functional.elr import elr_loss, elr_regularizer, elr_update_targets

__all__ = ["elr_loss", "elr_regularizer", "elr_update_targets"]
