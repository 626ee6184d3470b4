"""Regularisers for training discrete image tokenizers (VQ-VAE codebooks).

- :func:`semantic_alignment_loss` and :class:`SemanticRegulariser`: GigaTok's semantic
  regularisation (Xiong et al., "GigaTok: Scaling Visual Tokenizers to 3 Billion Parameters for
  Autoregressive Image Generation", arXiv 2504.08736, Sec. 3.2): the decoder's intermediate
  features, through a small projector phi, are pulled towards a frozen pretrained model's
  features f of the same image by cosine similarity,
  ``L_reg = (1/N) sum_i (1 - cos(phi(h_i), f_i))`` over the N spatial positions (the paper
  writes ``-mean cos``; the constant 1 changes no gradient), added with weight lambda (0.5).
- :func:`codebook_entropy_loss`: the entropy penalty on soft code assignments GigaTok uses to
  keep large codebooks in use (as in MAGVIT/LlamaGen): mean per-token entropy minus the entropy of
  the batch-average assignment (low when each token is confident and all codes are used).
- :func:`latent_perturbation` and :func:`perturb_tokens`: RobustTok's sampling-error synthesis
  (Qiu et al., "Robust Latent Matters: Boosting Image Generation with Sampling Error Synthesis",
  arXiv 2503.08354; official code lxa9867/ImageFolder, ``latent_perturbation.py``): for a share
  ``beta`` of the batch, each token is replaced with probability ``alpha`` by one of the
  ``delta`` codes nearest to its latent (uniformly, the nearest included), so the decoder learns
  to cope with the near-miss tokens an autoregressive sampler emits. :func:`perturb_tokens` does
  the same on token ids, for the paper's perturbed reconstruction score (pFID), and
  :func:`perturbation_ratio` is its annealing of ``alpha`` and ``delta`` over training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def semantic_alignment_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos)`` between (N, C, H, W) projected decoder features and the frozen model's
    (N, C, H, W) features, the cosine taken over channels at each position (GigaTok, Eq. 2)."""
    for name, x in (("projected", projected), ("teacher", teacher)):
        check_tensor(x, name, who="semantic_alignment_loss", ndim=4, dtype="float", non_empty=True,
                     finite=True)
    if projected.shape != teacher.shape:
        raise PriorlabError(f"semantic_alignment_loss: shapes differ ({tuple(projected.shape)} vs "
                            f"{tuple(teacher.shape)}); pool or project one to the other")
    return (1 - F.cosine_similarity(projected, teacher.detach(), dim=1)).mean()


class SemanticRegulariser(nn.Module):
    """A trainable projector (1x1-conv MLP, as GigaTok's small MLP) from decoder features to a
    frozen feature model's space, and the loss between them.

    ``teacher`` maps images (N, 1, S, S) to a (N, C, h, w) feature map; it is frozen here (its
    parameters get ``requires_grad=False``). The decoder feature map is average-pooled to (h, w)
    when its grid is finer. ``center_teacher`` subtracts the teacher features' per-channel mean
    over the batch and positions first: DINOv2's layer-normed patch features are roughly
    centred, but a ReLU trunk's are all non-negative, so any two of them have a cosine near 1
    and the uncentred loss would barely constrain the decoder.
    """

    def __init__(self, decoder_channels: int, teacher: nn.Module, teacher_channels: int,
                 hidden: int | None = None, center_teacher: bool = True):
        super().__init__()
        decoder_channels = check_number(decoder_channels, "decoder_channels", who="SemanticRegulariser",
                                        low=1, integer=True)
        teacher_channels = check_number(teacher_channels, "teacher_channels", who="SemanticRegulariser",
                                        low=1, integer=True)
        hidden = teacher_channels if hidden is None else check_number(
            hidden, "hidden", who="SemanticRegulariser", low=1, integer=True)
        self.projector = nn.Sequential(nn.Conv2d(decoder_channels, hidden, 1), nn.SiLU(),
                                       nn.Conv2d(hidden, teacher_channels, 1))
        self.center_teacher = bool(center_teacher)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def forward(self, decoder_features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(images)
            if self.center_teacher:
                target = target - target.mean(dim=(0, 2, 3), keepdim=True)
        projected = self.projector(decoder_features)
        if projected.shape[-2:] != target.shape[-2:]:
            projected = F.adaptive_avg_pool2d(projected, target.shape[-2:])
        return semantic_alignment_loss(projected, target)


def codebook_entropy_loss(distances: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Entropy penalty over (T, K) squared distances of T latents to K codes: with
    ``p = softmax(-d / temperature)``, ``mean_t H(p_t) - H(mean_t p_t)``."""
    check_tensor(distances, "distances", who="codebook_entropy_loss", ndim=2, dtype="float", non_empty=True,
                 finite=True)
    temperature = check_number(temperature, "temperature", who="codebook_entropy_loss", low=0.0,
                               low_open=True)
    log_p = F.log_softmax(-distances / temperature, dim=1)
    p = log_p.exp()
    per_token = -(p * log_p).sum(1).mean()
    average = p.mean(0)
    return per_token + (average * average.clamp(min=1e-12).log()).sum()


def _check_rates(who: str, alpha: float, delta: int, num_codes: int) -> tuple[float, int]:
    alpha = check_number(alpha, "alpha", who=who, low=0.0, high=1.0)
    delta = check_number(delta, "delta", who=who, low=1, integer=True)
    if delta > num_codes:
        raise PriorlabError(f"{who}: delta ({delta}) exceeds the codebook size ({num_codes})")
    return alpha, delta


def _pick_near(distances: torch.Tensor, alpha: float, delta: int,
               generator: torch.Generator | None) -> torch.Tensor:
    """For each row of (T, K) distances: the nearest code, or with probability ``alpha`` one of the
    ``delta`` nearest uniformly (which may again be the nearest)."""
    nearest = distances.topk(delta, dim=1, largest=False).indices
    pick = torch.randint(delta, (len(distances),), generator=generator)
    move = torch.rand(len(distances), generator=generator) < alpha
    pick = torch.where(move, pick, torch.zeros_like(pick))
    return nearest[torch.arange(len(distances)), pick]


def latent_perturbation(latents: torch.Tensor, codebook: torch.Tensor, *, alpha: float = 1.0,
                        beta: float = 0.1, delta: int = 100,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """RobustTok's training-time perturbation of (N, D, H, W) encoder latents.

    Returns quantised latents (N, D, H, W) where the first ``round(beta * N)`` images have each
    token replaced, with probability ``alpha``, by a uniformly chosen code among the ``delta``
    codes (rows of the (K, D) ``codebook``) nearest to its latent; the other images get their
    nearest code. Straight-through: the gradient reaches ``latents`` unchanged. Official
    defaults (configs/RobustTok.yaml): alpha 1.0, beta 0.1, delta 100 of 4,096 codes.
    """
    # torch.cdist, which finds the nearest codes, takes float32 or float64 only
    check_tensor(latents, "latents", who="latent_perturbation", ndim=4,
                 dtype=(torch.float32, torch.float64), finite=True)
    check_tensor(codebook, "codebook", who="latent_perturbation", shape=(None, latents.shape[1]),
                 dtype=latents.dtype, finite=True)
    alpha, delta = _check_rates("latent_perturbation", alpha, delta, len(codebook))
    beta = check_number(beta, "beta", who="latent_perturbation", low=0.0, high=1.0)
    n, d, h, w = latents.shape
    flat = latents.permute(0, 2, 3, 1).reshape(-1, d)
    distances = torch.cdist(flat.detach(), codebook.detach()).pow(2)
    perturbed = _pick_near(distances, alpha, delta, generator)
    nearest = distances.argmin(1)
    chosen_rows = (torch.arange(n) < round(beta * n)).repeat_interleave(h * w)
    codes = codebook[torch.where(chosen_rows, perturbed, nearest)].detach()
    quantised = flat + (codes - flat).detach()
    return quantised.reshape(n, h, w, d).permute(0, 3, 1, 2)


def perturbation_ratio(progress: float, *, start: float = 0.2, end: float = 0.6,
                       end_ratio: float = 0.5) -> float:
    """RobustTok's annealing factor for ``alpha`` and ``delta`` at training ``progress`` in
    [0, 1]: 1 until ``start``, then falling linearly to ``end_ratio`` at ``end`` (official:
    epochs 40 and 120 of 200, end ratio 0.5)."""
    progress = check_number(progress, "progress", who="perturbation_ratio", low=0.0, high=1.0)
    if not 0 <= start <= end <= 1:
        raise PriorlabError(f"perturbation_ratio: need 0 <= start <= end <= 1, got {start}, {end}")
    if progress <= start:
        return 1.0
    if progress >= end:
        return end_ratio
    return 1.0 - (progress - start) / (end - start) * (1.0 - end_ratio)


def perturb_tokens(tokens: torch.Tensor, codebook: torch.Tensor, *, rate: float, delta: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids (any shape) with each replaced, with probability ``rate``, by a uniformly chosen
    id among the ``delta`` codes nearest to its own code (itself included): the sampling errors
    RobustTok's pFID decodes."""
    check_tensor(tokens, "tokens", who="perturb_tokens", dtype="integer", non_empty=True)
    check_tensor(codebook, "codebook", who="perturb_tokens", ndim=2,
                 dtype=(torch.float32, torch.float64), finite=True)
    rate, delta = _check_rates("perturb_tokens", rate, delta, len(codebook))
    if tokens.min() < 0 or tokens.max() >= len(codebook):
        raise PriorlabError(f"perturb_tokens: token ids must lie in [0, {len(codebook)}), got "
                            f"[{int(tokens.min())}, {int(tokens.max())}]")
    codes = codebook.detach()[tokens.flatten()]
    distances = torch.cdist(codes, codebook.detach()).pow(2)
    return _pick_near(distances, rate, delta, generator).reshape(tokens.shape)
