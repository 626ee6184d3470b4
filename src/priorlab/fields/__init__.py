"""The INR toolkit (neural fields): coordinates, coordinate networks, LIIF's local implicit
decoder, fitting and metrics. Shared by the family-F papers (neural fields, inverse problems)."""

from priorlab.fields.coords import PHOTOS, grid_coords, image_to_field, load_photo, sample_image
from priorlab.fields.fit import fit_field, render_field
from priorlab.fields.liif import LocalImplicitDecoder, query_cell, render
from priorlab.fields.metrics import boundary_fscore, chamfer_distance, iou, psnr, ssim
from priorlab.fields.networks import CoordinateMLP, FourierFeatures, SineLayer, Siren, mlp

__all__ = ["PHOTOS", "CoordinateMLP", "FourierFeatures", "LocalImplicitDecoder", "SineLayer", "Siren",
           "boundary_fscore", "chamfer_distance", "fit_field", "grid_coords", "image_to_field", "iou",
           "load_photo", "mlp", "psnr", "query_cell", "render", "render_field", "sample_image", "ssim"]
