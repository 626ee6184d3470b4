"""NAISR: an atlas SDF deformed by one additive displacement network per covariate.

Jiao et al., "NAISR: A 3D Neural Additive Model for Interpretable Shape Representation",
ICLR 2024, arXiv:2303.09234; official code github.com/uncbiag/NAISR (``naisr/model_naigsr.py``,
class ``DeepNAIGSR``; losses ``loss_pointcloud_sdf`` in ``naisr/loss_funcs.py``). A shape with
covariates ``c = (c_1..c_K)`` and shape code ``z`` is the zero level set of

    s(p | c, z) = T(p + sum_k d_k(p, c_k, z)),   d_k(p, c_k, z) = g_k(p, c_k, z) - g_k(p, 0, z)

with ``T`` the template (atlas) SDF and ``g_k`` one network per covariate, so covariate k at
its reference value 0 moves nothing and each covariate's effect is its own displacement field
(additive, hence interpretable). ``z`` is a per-shape code learned by auto-decoding (DeepSDF);
``z = 0`` gives the population trend ``s(p | c, 0)``, which the official code also trains
("z padding", its disentangle loss) and uses for covariate-driven shape evolution.

:class:`ConditionalSDF` is the baseline the paper compares against in spirit (DeepSDF / A-SDF):
one network on ``[p, c, z]``. :func:`sdf_loss_terms` is the official loss family and
:func:`fit_codes` the test-time code fit (``reconstruct.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.fields.networks import Siren
from priorlab.validation import check_number, check_tensor


def _size(value, name: str, who: str, low: int = 1) -> int:
    return check_number(value, name, who=who, low=low, integer=True)


def _inputs(model, points, covariates, codes, who: str):
    """Validate (B, N, D) points, (B, K) covariates and optional (B, L) codes; zeros for None."""
    check_tensor(points, "points", who=who, ndim=3, dtype="float", non_empty=True)
    if points.shape[-1] != model.dim:
        raise PriorlabError(f"{who}: points must end in {model.dim} coordinates, got {tuple(points.shape)}")
    batch = points.shape[0]
    check_tensor(covariates, "covariates", who=who, shape=(batch, model.n_covariates), dtype="float",
                 finite=True, hint="one row of covariate values per shape in the batch")
    if codes is None:
        codes = points.new_zeros(batch, model.latent_dim)
    check_tensor(codes, "codes", who=who, shape=(batch, model.latent_dim), dtype="float",
                 hint="one shape code per shape, or None for the population trend (z = 0)")
    return covariates.to(points.dtype), codes.to(points.dtype)


class NAISR(nn.Module):
    """Template SDF ``T`` plus one displacement network ``g_k`` per covariate (SIREN backbones,
    the official ``Backbone: siren`` setting).

    ``forward(points (B, N, D), covariates (B, K), codes (B, L) or None) -> sdf (B, N, 1)``.
    During training the reference input of ``g_k`` is ``N(0, reference_noise^2)`` instead of 0
    (official ``training=True`` branch, 1e-3); in eval mode it is exactly 0, so zero covariates
    give exactly the template.
    """

    def __init__(self, n_covariates: int, latent_dim: int = 8, hidden: int = 64, depth: int = 3,
                 w0: float = 30.0, dim: int = 3, reference_noise: float = 1e-3):
        super().__init__()
        who = "NAISR"
        self.n_covariates = _size(n_covariates, "n_covariates", who)
        self.latent_dim = _size(latent_dim, "latent_dim", who, low=0)
        self.dim = _size(dim, "dim", who)
        self.reference_noise = check_number(reference_noise, "reference_noise", who=who, low=0.0)
        self.template = Siren(self.dim, 1, hidden, depth, w0, w0)
        self.deformations = nn.ModuleList(
            Siren(self.dim + 1 + self.latent_dim, self.dim, hidden, depth, w0, w0)
            for _ in range(self.n_covariates))

    def displacements(self, points: torch.Tensor, covariates: torch.Tensor,
                      codes: torch.Tensor | None = None) -> torch.Tensor:
        """Each covariate's displacement ``d_k(p, c_k, z)``, shape (B, N, K, D)."""
        covariates, codes = _inputs(self, points, covariates, codes, "NAISR.displacements")
        n = points.shape[1]
        code = codes[:, None, :].expand(-1, n, -1)
        fields = []
        for k, net in enumerate(self.deformations):
            value = covariates[:, None, k:k + 1].expand(-1, n, -1)
            reference = torch.zeros_like(value)
            if self.training and self.reference_noise > 0:
                reference = reference + self.reference_noise * torch.randn_like(value)
            # one pass over [at c_k; at the reference] (fewer, larger matmuls on CPU)
            both = net(torch.cat([torch.cat([points, value, code], -1),
                                  torch.cat([points, reference, code], -1)], dim=1))
            fields.append(both[:, :n] - both[:, n:])
        return torch.stack(fields, dim=2)

    def forward(self, points: torch.Tensor, covariates: torch.Tensor,
                codes: torch.Tensor | None = None) -> torch.Tensor:
        return self.template(points + self.displacements(points, covariates, codes).sum(dim=2))

    def template_sdf(self, points: torch.Tensor) -> torch.Tensor:
        """The atlas ``T(p)``: the shape at all covariates 0 (and any code)."""
        return self.template(points)


class ConditionalSDF(nn.Module):
    """One SIREN on ``[p, c, z]``: a conditional DeepSDF (A-SDF-style) with the covariates
    concatenated to the input; the non-additive baseline. Same call as :class:`NAISR`."""

    def __init__(self, n_covariates: int, latent_dim: int = 8, hidden: int = 128, depth: int = 3,
                 w0: float = 30.0, dim: int = 3):
        super().__init__()
        who = "ConditionalSDF"
        self.n_covariates = _size(n_covariates, "n_covariates", who)
        self.latent_dim = _size(latent_dim, "latent_dim", who, low=0)
        self.dim = _size(dim, "dim", who)
        self.net = Siren(self.dim + self.n_covariates + self.latent_dim, 1, hidden, depth, w0, w0)

    def forward(self, points: torch.Tensor, covariates: torch.Tensor,
                codes: torch.Tensor | None = None) -> torch.Tensor:
        covariates, codes = _inputs(self, points, covariates, codes, "ConditionalSDF")
        n = points.shape[1]
        return self.net(torch.cat([points, covariates[:, None, :].expand(-1, n, -1),
                                   codes[:, None, :].expand(-1, n, -1)], -1))


# Official weights of loss_pointcloud_sdf (3e2, 1e2, 1e3, 1e2) divided by 1e2.
LOSS_WEIGHTS = {"surface": 3.0, "normal": 1.0, "off_surface": 10.0, "eikonal": 1.0}


def sdf_loss_terms(model: nn.Module, surface: torch.Tensor, normals: torch.Tensor,
                   points: torch.Tensor, sdf: torch.Tensor, covariates: torch.Tensor,
                   codes: torch.Tensor | None = None, clamp: float = 1.0) -> dict[str, torch.Tensor]:
    """The official SDF loss terms, weighted (:data:`LOSS_WEIGHTS`), for a batch of B shapes.

    ``surface`` (B, S, D) points on the shapes with unit ``normals`` (B, S, D); ``points``
    (B, M, D) off the surface with true signed distances ``sdf`` (B, M). Terms: ``surface``
    ``|s|`` on the surface; ``normal`` ``1 - cos(grad s, n)`` there; ``off_surface``
    ``|clamp(s) - clamp(sdf)|``; ``eikonal`` ``| |grad s| - 1 |`` on all points.
    """
    who = "sdf_loss_terms"
    check_tensor(surface, "surface", who=who, ndim=3, dtype="float", non_empty=True, finite=True)
    check_tensor(normals, "normals", who=who, shape=tuple(surface.shape), dtype="float", finite=True)
    check_tensor(points, "points", who=who, shape=(surface.shape[0], None, surface.shape[2]),
                 dtype="float", finite=True)
    check_tensor(sdf, "sdf", who=who, shape=tuple(points.shape[:2]), dtype="float", finite=True)
    clamp = check_number(clamp, "clamp", who=who, low=0.0, low_open=True)
    coords = torch.cat([surface, points], dim=1).detach().requires_grad_(True)
    pred = model(coords, covariates, codes)[..., 0]
    (grad,) = torch.autograd.grad(pred.sum(), coords, create_graph=True)
    n_surface = surface.shape[1]
    on, off = pred[:, :n_surface], pred[:, n_surface:]
    terms = {
        "surface": on.abs().mean(),
        "normal": (1 - torch.cosine_similarity(grad[:, :n_surface], normals, dim=-1)).mean(),
        "off_surface": (off.clamp(-clamp, clamp) - sdf.clamp(-clamp, clamp)).abs().mean(),
        "eikonal": (grad.norm(dim=-1) - 1).abs().mean(),
    }
    return {name: LOSS_WEIGHTS[name] * value for name, value in terms.items()}


def fit_codes(model: nn.Module, surface: torch.Tensor, normals: torch.Tensor, points: torch.Tensor,
              sdf: torch.Tensor, covariates: torch.Tensor, steps: int = 200, lr: float = 5e-3,
              code_reg: float = 0.02, max_norm: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Auto-decode shape codes for new shapes with known covariates (official ``reconstruct.py``):
    the network is frozen, one code per shape minimises :func:`sdf_loss_terms` plus
    ``code_reg * mean(z^2)`` with Adam (lr divided by 10 halfway), codes kept within
    ``max_norm``. Returns the codes (B, L)."""
    steps = _size(steps, "steps", "fit_codes")
    lr = check_number(lr, "lr", who="fit_codes", low=0.0, low_open=True)
    check_number(code_reg, "code_reg", who="fit_codes", low=0.0)
    max_norm = check_number(max_norm, "max_norm", who="fit_codes", low=0.0, low_open=True)
    generator = torch.Generator().manual_seed(seed)
    codes = (0.01 * torch.randn(surface.shape[0], model.latent_dim, generator=generator)).to(surface)
    codes.requires_grad_(True)
    optimizer = torch.optim.Adam([codes], lr=lr)
    was_training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for step in range(steps):
            if step == steps // 2:
                for group in optimizer.param_groups:
                    group["lr"] = lr / 10
            terms = sdf_loss_terms(model, surface, normals, points, sdf, covariates, codes)
            loss = sum(terms.values()) + code_reg * codes.pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                codes.mul_((max_norm / codes.norm(dim=1, keepdim=True).clamp_min(max_norm)))
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return codes.detach()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
