"""The INR toolkit (neural fields): coordinates, coordinate networks, LIIF's local implicit
decoder, fitting, metrics, and signed-distance shapes with known covariates. Shared by the
family-F papers (neural fields, inverse problems)."""

from priorlab.fields.coords import PHOTOS, grid_coords, image_to_field, load_photo, sample_image
from priorlab.fields.fit import fit_field, render_field
from priorlab.fields.liif import LocalImplicitDecoder, query_cell, render
from priorlab.fields.metrics import boundary_fscore, chamfer_distance, iou, psnr, ssim
from priorlab.fields.networks import CoordinateMLP, FourierFeatures, SineLayer, Siren, mlp
from priorlab.fields.pfnr import PFNR, FourierSubOperator, SubnetWeight, positional_embedding, winning_mask
from priorlab.fields.sdf import (SDFSamples, Shape, ShapeFamily, capsule_sdf, extract_surface, grid_points,
                                implicit_normals, sample_sdf, tube_family)

__all__ = ["PFNR", "PHOTOS", "CoordinateMLP", "FourierFeatures", "FourierSubOperator", "LocalImplicitDecoder",
           "SDFSamples", "Shape", "SubnetWeight", "positional_embedding", "winning_mask",
           "ShapeFamily", "SineLayer", "Siren", "boundary_fscore", "capsule_sdf", "chamfer_distance",
           "extract_surface", "fit_field", "grid_coords", "grid_points", "image_to_field", "implicit_normals",
           "iou", "load_photo", "mlp", "psnr", "query_cell", "render", "render_field", "sample_image",
           "sample_sdf", "ssim", "tube_family"]
