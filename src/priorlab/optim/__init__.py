"""Optimisers and wrapper optimisers."""

from priorlab.optim.lion import Lion
from priorlab.optim.perpgrad import PerpGrad, perp_grad_

__all__ = ["Lion", "PerpGrad", "perp_grad_"]
