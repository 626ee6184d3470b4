"""Run-time-optimised scene flow: Neural Scene Flow Prior, Fast Neural Scene Flow and a no-prior baseline.

Public API::

    from priorlab.sceneflow import load_points, load_av2_pair, estimate_flow, scene_flow_metrics

    pair = load_av2_pair(".../pair_*.npz")
    res = estimate_flow(pair["pc0"], pair["pc1"], method="nsfp", points=2048)
    scene_flow_metrics(res.flow, pair["flow"], mask=pair["eval_mask"])
"""

from priorlab.sceneflow.estimate import METHODS, DegenerateFitWarning, FlowResult, defaults, estimate_flow
from priorlab.sceneflow.fast import FAST_DEFAULTS
from priorlab.sceneflow.io import SUPPORTED_EXTENSIONS, load_av2_pair, load_flow, load_points, save_flow
from priorlab.sceneflow.losses import DistanceTransform, KDIndex, chamfer_loss, nearest_neighbor
from priorlab.sceneflow.metrics import (
    AV2_CATEGORIES,
    BUCKETED_META_CATEGORIES,
    bucketed_epe,
    scene_flow_metrics,
    threeway_epe,
)
from priorlab.sceneflow.nsfp import NSFP_DEFAULTS, FlowMLP
from priorlab.sceneflow.preprocess import (
    compensate_ego_motion,
    crop_range,
    ground_mask_from_height_map,
    remove_ground_plane,
    subsample,
)

__all__ = [
    "load_points",
    "load_av2_pair",
    "save_flow",
    "load_flow",
    "SUPPORTED_EXTENSIONS",
    "crop_range",
    "remove_ground_plane",
    "ground_mask_from_height_map",
    "subsample",
    "compensate_ego_motion",
    "nearest_neighbor",
    "chamfer_loss",
    "DistanceTransform",
    "KDIndex",
    "FlowResult",
    "estimate_flow",
    "DegenerateFitWarning",
    "METHODS",
    "defaults",
    "FlowMLP",
    "NSFP_DEFAULTS",
    "FAST_DEFAULTS",
    "scene_flow_metrics",
    "threeway_epe",
    "bucketed_epe",
    "AV2_CATEGORIES",
    "BUCKETED_META_CATEGORIES",
]
