"""Modules, activations and parametrisations."""

from priorlab.nn.attention_svm import NormalizedGD, SingleHeadAttention, att_svm, direction_cosine
from priorlab.nn.compander import (WeightCompander, apply_weight_compander, effective_weights,
                                   remove_weight_compander)
from priorlab.nn.dino_head import DinoHead, DinoModel
from priorlab.nn.nested_dropout import NestedDropout
from priorlab.nn.purifier import (PurifiedClassifier, QuantisedVAEPurifier, purifier_loss,
                                  uniform_quantise)
from priorlab.nn.stablemax import StableMax, log_stablemax, stablemax, stablemax_cross_entropy

__all__ = ["NormalizedGD", "SingleHeadAttention", "att_svm", "direction_cosine", "WeightCompander",
           "apply_weight_compander", "effective_weights", "remove_weight_compander", "DinoHead",
           "DinoModel", "NestedDropout", "PurifiedClassifier", "QuantisedVAEPurifier", "purifier_loss",
           "uniform_quantise", "StableMax", "log_stablemax", "stablemax", "stablemax_cross_entropy"]
