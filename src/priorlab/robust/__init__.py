"""Adversarial attacks and certified robustness (randomised smoothing)."""

from priorlab.robust.attacks import fgsm, pgd, strongest_per_example
from priorlab.robust.smoothing import ABSTAIN, certify, clopper_pearson_lower, predict

__all__ = ["ABSTAIN", "certify", "clopper_pearson_lower", "fgsm", "pgd", "predict",
           "strongest_per_example"]
