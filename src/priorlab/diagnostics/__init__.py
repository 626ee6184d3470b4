"""Measurements of training dynamics and representations, for any nn.Module and loss."""

from priorlab.diagnostics.calibration import expected_calibration_error, reliability_diagram
from priorlab.diagnostics.collapse import softmax_collapse_fraction, softmax_collapse_mask
from priorlab.diagnostics.hessian import (
    TraceEstimate,
    hessian_matrix,
    hutchinson_trace,
    hvp,
    select_params,
    top_eigenvalue,
)
from priorlab.diagnostics.probe import LinearProbe, fit_linear_probe, linear_probe
from priorlab.diagnostics.rank import effective_rank, srank

__all__ = [
    "expected_calibration_error",
    "reliability_diagram",
    "softmax_collapse_fraction",
    "softmax_collapse_mask",
    "TraceEstimate",
    "hessian_matrix",
    "hutchinson_trace",
    "hvp",
    "select_params",
    "top_eigenvalue",
    "LinearProbe",
    "fit_linear_probe",
    "linear_probe",
    "effective_rank",
    "srank",
]
