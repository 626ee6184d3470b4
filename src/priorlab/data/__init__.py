"""Offline datasets and generators; never a download at run time."""

from priorlab.data.images import ImageData, IndexedDataset, load_images

__all__ = ["ImageData", "IndexedDataset", "load_images"]
