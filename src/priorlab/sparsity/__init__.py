"""Sparsity: N:M masks and sparse training (SR-STE and its decayed successors); pruning masks
and training-free mask refinement for LLMs."""

from priorlab.sparsity.dsnot import DSnoT, dsnot_mask
from priorlab.sparsity.nm import (MDGF, SDGF, SRSTE, NMSparsity, NMSparsityStep, advance_nm_step,
                                  apply_nm_sparsity, decayed_mask_weight, is_nm_sparse, mask_decay_beta,
                                  nm_layers, nm_mask, remove_nm_sparsity, srste, structure_decay_patterns)
from priorlab.sparsity.pruning import (InputStats, decoder_layers, magnitude_mask, prune_model, row_mask,
                                       wanda_mask, wanda_scores, weight_sparsity)

__all__ = ["DSnoT", "dsnot_mask",
           "MDGF", "SDGF", "SRSTE", "NMSparsity", "NMSparsityStep", "advance_nm_step", "apply_nm_sparsity",
           "decayed_mask_weight", "is_nm_sparse", "mask_decay_beta", "nm_layers", "nm_mask",
           "remove_nm_sparsity", "srste", "structure_decay_patterns",
           "InputStats", "decoder_layers", "magnitude_mask", "prune_model", "row_mask", "wanda_mask",
           "wanda_scores", "weight_sparsity"]
