"""Offline datasets and generators; never a download at run time."""

from priorlab.data.icl import icl_regression_batch
from priorlab.data.images import ImageData, IndexedDataset, load_images
from priorlab.data.markov import HMM, Windows, noisy_cycle
from priorlab.data.modular import ModularData, modular_addition
from priorlab.data.noise import ASYMMETRIC_MAPPINGS, asymmetric_noise, symmetric_noise
from priorlab.data.video import CLIPS, load_clip

__all__ = [
    "icl_regression_batch",
    "ImageData",
    "IndexedDataset",
    "load_images",
    "HMM",
    "Windows",
    "noisy_cycle",
    "ModularData",
    "modular_addition",
    "ASYMMETRIC_MAPPINGS",
    "asymmetric_noise",
    "symmetric_noise",
    "CLIPS",
    "load_clip",
]
