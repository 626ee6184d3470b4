"""Gradient inversion attacks on shared gradients, with and without a generative prior.

What for: auditing how much a federated-learning client leaks through the gradient it shares.
Given the gradient of a classifier's loss on a private batch (and the batch's labels), each attack
searches for images whose gradient matches it:

- :func:`invert_pixels` — pixel-space search (DLG, Zhu et al. 2019, arXiv 1906.08935, in the
  form of Inverting Gradients / IG, Geiping et al. 2020, arXiv 2003.14053): cosine gradient
  matching plus total variation, pixels kept in [0, 1].
- :func:`invert_latent` — latent-only search through a pretrained generator (GI / GIAS's first
  stage, Jeon et al. 2021): the image is ``G(z)`` and only ``z`` moves.
- :func:`invert_features` — GIFD (Fang et al., "GIFD: A Generative Gradient Inversion Method with
  Feature Domain Optimization", ICCV 2023, arXiv 2308.04699): the latent search, then the
  generator's intermediate features, one block after another. At block ``k`` the feature
  ``h_k`` (initialised at the previous stage's result passed through one more block) is optimised
  under ``||h_k - h_k^0||_1 <= r_k`` (projected gradient descent onto the l1 ball, the paper's
  Eq. 4-5) and the image is ``G_{k:}(h_k)``. The output is the stage output with the lowest
  gradient-matching loss (the paper's "select the best result among all layers").

The gradient-matching cost is IG's ``1 - <g, g*> / (|g| |g*|)`` over all parameters at once.
:func:`shared_gradients` computes what a client shares, with the defences the attack is evaluated
against (GIFD Sec. 5.5): magnitude pruning (gradient sparsification) and additive Gaussian noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.generative.gan import Generator
from priorlab.validation import check_number, check_tensor


def defend_gradients(gradients: Sequence[torch.Tensor], *, prune_ratio: float = 0.0,
                     noise_std: float = 0.0, rng: torch.Generator | None = None) -> list[torch.Tensor]:
    """Apply the client-side defences: zero the ``prune_ratio`` smallest-magnitude entries of each
    tensor (gradient pruning / sparsification), then add N(0, noise_std^2) noise to every entry.
    Both at 0 return copies of the gradients unchanged."""
    prune_ratio = check_number(prune_ratio, "prune_ratio", who="defend_gradients", low=0, high=1,
                               high_open=True)
    noise_std = check_number(noise_std, "noise_std", who="defend_gradients", low=0)
    defended = []
    for i, grad in enumerate(gradients):
        check_tensor(grad, f"gradients[{i}]", who="defend_gradients", dtype="float", finite=True)
        grad = grad.detach().clone()
        n_pruned = int(prune_ratio * grad.numel())
        if n_pruned:
            smallest = grad.abs().flatten().topk(n_pruned, largest=False).indices
            grad.view(-1)[smallest] = 0
        if noise_std:
            grad = grad + noise_std * torch.randn(grad.shape, generator=rng, dtype=grad.dtype)
        defended.append(grad)
    return defended


def _check_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, who: str) -> None:
    check_tensor(images, "images", who=who, ndim=4, dtype="float", non_empty=True)
    check_tensor(labels, "labels", who=who, shape=(len(images),), dtype="integer")
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"{who}: model must be an nn.Module, got {type(model).__name__}")


def shared_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                     prune_ratio: float = 0.0, noise_std: float = 0.0,
                     rng: torch.Generator | None = None) -> list[torch.Tensor]:
    """The gradient of the mean cross-entropy of ``model`` on the batch w.r.t. every trainable
    parameter, as a client would share it, after :func:`defend_gradients`."""
    _check_batch(model, images, labels, "shared_gradients")
    check_tensor(images, "images", who="shared_gradients", finite=True)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(images), labels)
    grads = torch.autograd.grad(loss, params)
    return defend_gradients(grads, prune_ratio=prune_ratio, noise_std=noise_std, rng=rng)


def gradient_matching_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                           target: Sequence[torch.Tensor]) -> torch.Tensor:
    """IG's cost ``1 - <g(x), g*> / (|g(x)| |g*|)`` over all parameters at once, differentiable
    in ``images`` (0 when the gradients are parallel, 2 when opposite)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if len(params) != len(target):
        raise PriorlabError(f"gradient_matching_loss: the model has {len(params)} trainable "
                            f"tensors but {len(target)} target gradients were given")
    grads = torch.autograd.grad(F.cross_entropy(model(images), labels), params, create_graph=True)
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    norm = sum(g.pow(2).sum() for g in grads).sqrt() * sum(t.pow(2).sum() for t in target).sqrt()
    return 1 - dot / norm.clamp(min=1e-12)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (IG's anisotropic TV)."""
    return ((images[..., 1:, :] - images[..., :-1, :]).abs().mean()
            + (images[..., :, 1:] - images[..., :, :-1]).abs().mean())


def project_l1_ball(x: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection of each row ``x[i]`` (flattened) onto ``{v : |v|_1 <= radius[i]}``
    (Duchi et al. 2008, "Efficient projections onto the l1-ball"); rows inside stay as they are."""
    check_tensor(x, "x", who="project_l1_ball", min_ndim=1, dtype="float", non_empty=True)
    flat = x.flatten(1) if x.ndim > 1 else x[None]
    radius = torch.as_tensor(radius, dtype=flat.dtype).expand(len(flat))
    if not torch.isfinite(radius).all() or (radius < 0).any():
        raise PriorlabError(f"project_l1_ball: radius must be finite and >= 0, got {radius.tolist()}")
    magnitude = flat.abs()
    ordered = magnitude.sort(1, descending=True).values
    cumulative = ordered.cumsum(1)
    ranks = torch.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
    count = (ordered * ranks > cumulative - radius[:, None]).sum(1).clamp(min=1)
    theta = (cumulative.gather(1, (count - 1)[:, None]).squeeze(1) - radius) / count
    projected = flat.sign() * (magnitude - theta[:, None]).clamp(min=0)
    inside = magnitude.sum(1) <= radius
    out = torch.where(inside[:, None], flat, projected)
    return out.view_as(x)


@dataclass
class InversionResult:
    """Reconstructed images (N, 1, S, S) in [0, 1], their gradient-matching loss, the stage that
    produced them (``pixels``, ``latent`` or ``feature k``) and the loss after every stage."""

    images: torch.Tensor
    loss: float
    stage: str
    stage_losses: dict[str, float] = field(default_factory=dict)


def _check_common(model, target, labels, steps, lr, tv, restarts, who):
    check_tensor(labels, "labels", who=who, ndim=1, dtype="integer", non_empty=True)
    for i, grad in enumerate(target):
        check_tensor(grad, f"target[{i}]", who=who, dtype="float", finite=True)
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"{who}: model must be an nn.Module, got {type(model).__name__}")
    return (check_number(steps, "steps", who=who, low=1, integer=True),
            check_number(lr, "lr", who=who, low=0, low_open=True),
            check_number(tv, "tv", who=who, low=0),
            check_number(restarts, "restarts", who=who, low=1, integer=True))


def _optimise(variable: torch.Tensor, render, model, labels, target, *, steps: int, lr: float,
              tv: float, project=None) -> tuple[torch.Tensor, float]:
    """Adam on ``variable`` with the official step decay (x0.1 at 3/8, 5/8, 7/8 of the steps);
    ``project`` (in place, without gradients) runs after every step. Returns the final rendered
    images and their gradient-matching loss."""
    variable.requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=lr)
    milestones = [int(steps * 3 / 8), int(steps * 5 / 8), int(steps * 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    for _ in range(steps):
        images = render(variable)
        loss = gradient_matching_loss(model, images, labels, target)
        if tv:
            loss = loss + tv * total_variation(images)
        (grad,) = torch.autograd.grad(loss, [variable])
        optimizer.zero_grad()
        variable.grad = grad
        optimizer.step()
        schedule.step()
        if project is not None:
            with torch.no_grad():
                project(variable)
    variable.requires_grad_(False)
    images = render(variable).detach()
    return images, float(gradient_matching_loss(model, images, labels, target).detach())


def invert_pixels(model: nn.Module, target: Sequence[torch.Tensor], labels: torch.Tensor,
                  image_shape: tuple[int, int, int], *, steps: int = 1000, lr: float = 0.1,
                  tv: float = 1e-4, restarts: int = 1, seed: int = 0) -> InversionResult:
    """DLG/IG: optimise the pixels (started uniform in [0, 1], clipped to [0, 1] after every step)
    against the shared gradient; the restart with the lowest matching loss wins."""
    steps, lr, tv, restarts = _check_common(model, target, labels, steps, lr, tv, restarts,
                                            "invert_pixels")
    rng = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        pixels = torch.rand(len(labels), *image_shape, generator=rng)
        images, loss = _optimise(pixels, lambda x: x, model, labels, target, steps=steps, lr=lr,
                                 tv=tv, project=lambda x: x.clamp_(0, 1))
        if best is None or loss < best.loss:
            best = InversionResult(images, loss, "pixels", {"pixels": loss})
    return best


def _check_generator(generator: Generator, who: str) -> Generator:
    if not isinstance(generator, Generator):
        raise PriorlabError(f"{who}: generator must be a priorlab.generative.Generator (blocks that "
                            f"can start at an intermediate feature), got {type(generator).__name__}")
    return generator.eval()


def invert_latent(model: nn.Module, target: Sequence[torch.Tensor], labels: torch.Tensor,
                  generator: Generator, *, steps: int = 1000, lr: float = 0.1, tv: float = 1e-4,
                  restarts: int = 1, seed: int = 0) -> InversionResult:
    """GI (latent-only): optimise ``z`` (started N(0, I)) so that ``G(z)``'s gradient matches;
    the generator is frozen in eval mode. Returns the best restart."""
    steps, lr, tv, restarts = _check_common(model, target, labels, steps, lr, tv, restarts,
                                            "invert_latent")
    generator = _check_generator(generator, "invert_latent")
    best, _ = _latent_search(model, target, labels, generator, steps, lr, tv, restarts, seed)
    return best


def _latent_search(model, target, labels, generator, steps, lr, tv, restarts, seed):
    rng = torch.Generator().manual_seed(seed)
    best, best_z = None, None
    for _ in range(restarts):
        z = torch.randn(len(labels), generator.latent_dim, generator=rng)
        images, loss = _optimise(z, generator, model, labels, target, steps=steps, lr=lr, tv=tv)
        if best is None or loss < best.loss:
            best, best_z = InversionResult(images, loss, "latent", {"latent": loss}), z.detach()
    return best, best_z


def invert_features(model: nn.Module, target: Sequence[torch.Tensor], labels: torch.Tensor,
                    generator: Generator, *, latent_steps: int = 1000,
                    layer_steps: int | Sequence[int] = 1000, radii: Sequence[float] = (0.5, 1.0, 1.5),
                    lr: float = 0.1, tv: float = 1e-4, restarts: int = 1,
                    seed: int = 0) -> InversionResult:
    """GIFD: the latent search of :func:`invert_latent`, then for each intermediate feature
    ``k = 1, 2, ...`` (one per entry of ``radii``, at most ``len(generator.blocks) - 1``) a search
    over ``h_k`` within the l1 ball ``|h_k - h_k^0|_1 <= radii[k-1] * |h_k^0|_1`` (per image)
    around its initial value ``h_k^0`` (the previous stage's optimum through one more block).
    Returns the stage output with the lowest gradient-matching loss.

    ``radii`` are relative to each image's initial feature norm (the official code uses absolute
    radii growing linearly with depth, r_k = r_1 + (k - 1) dr, tuned to BigGAN/StyleGAN2).
    """
    latent_steps, lr, tv, restarts = _check_common(model, target, labels, latent_steps, lr, tv,
                                                   restarts, "invert_features")
    generator = _check_generator(generator, "invert_features")
    n_layers = len(generator.blocks) - 1
    radii = [check_number(r, f"radii[{i}]", who="invert_features", low=0) for i, r in enumerate(radii)]
    if not 1 <= len(radii) <= n_layers:
        raise PriorlabError(f"invert_features: give 1 to {n_layers} radii (one per intermediate "
                            f"feature of this generator), got {len(radii)}")
    if isinstance(layer_steps, int):
        layer_steps = [layer_steps] * len(radii)
    if len(layer_steps) != len(radii):
        raise PriorlabError(f"invert_features: layer_steps needs one entry per radius "
                            f"({len(radii)}), got {len(layer_steps)}")
    layer_steps = [check_number(s, "layer_steps", who="invert_features", low=1, integer=True)
                   for s in layer_steps]
    best, z = _latent_search(model, target, labels, generator, latent_steps, lr, tv, restarts, seed)
    stage_losses = dict(best.stage_losses)
    with torch.no_grad():
        feature = generator(z, stop=1)
    for k, (radius, steps) in enumerate(zip(radii, layer_steps, strict=True), start=1):
        if k > 1:
            with torch.no_grad():
                feature = generator(feature, start=k - 1, stop=k)
        origin = feature.clone()
        budget = radius * origin.flatten(1).abs().sum(1)

        def project(h, origin=origin, budget=budget):
            h.copy_(origin + project_l1_ball(h - origin, budget))

        images, loss = _optimise(feature, lambda h, k=k: generator(h, start=k), model, labels, target,
                                 steps=steps, lr=lr, tv=tv, project=project)
        stage_losses[f"feature {k}"] = loss
        if loss < best.loss:
            best = InversionResult(images, loss, f"feature {k}")
    best.stage_losses = stage_losses
    return best
