"""Adversarial attacks and certified robustness (randomised smoothing)."""

from priorlab.robust.attacks import fgsm, pgd
from priorlab.robust.smoothing import ABSTAIN, certify, clopper_pearson_lower, predict

__all__ = ["ABSTAIN", "certify", "clopper_pearson_lower", "fgsm", "pgd", "predict"]
