"""Latent-quantised variational purifier: Kumar et al., "Variational Inference with Latent Space
Quantization for Adversarial Resilience" (ICPR 2020, arXiv:1903.09940).

A Lipschitz-constrained encoder (spectral-normalised linear layers and 1-Lipschitz ReLUs) maps
an input to a Gaussian posterior ``N(mu, diag(exp(logvar)))``; a reparametrised sample is
uniformly quantised (``step * round(z / step)``, straight-through gradient) and decoded back to
image space. Trained on clean data only (reconstruction + KL), it is put in front of any
classifier at test time: small input perturbations move the latent by at most the encoder's
Lipschitz constant times their size, and the quantiser snaps most such moves back to the same
code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor, describe


class _RoundStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, step):
        return torch.round(z / step) * step

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def uniform_quantise(z: torch.Tensor, step: float) -> torch.Tensor:
    """Round ``z`` to the grid ``step * Z``; the backward pass is the identity (straight-through)."""
    who = "uniform_quantise"
    z = check_tensor(z, "z", who=who, dtype="float")
    step = check_number(step, "step", who=who, low=0, low_open=True,
                        hint="the quantisation step, e.g. 0.5")
    out = _RoundStraightThrough.apply(z, step)
    if not bool(torch.isfinite(out).all()):  # one check: a NaN in z, or z / step overflowed
        problem = ("contains NaN or infinity" if not bool(torch.isfinite(z).all())
                   else f"/ step overflows {str(z.dtype).removeprefix('torch.')}; use a larger step")
        raise PriorlabError(f"{who}: z {problem} ({describe(z)})")
    return out


def _linear(n_in: int, n_out: int, lipschitz: bool) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    return spectral_norm(layer) if lipschitz else layer


class QuantisedVAEPurifier(nn.Module):
    """Encoder -> (variational) latent -> uniform quantiser -> decoder, for flattened images.

    ``lipschitz=False, variational=False, quant_step=None`` gives a plain autoencoder (the
    ablation baseline). ``forward(x)`` returns ``(reconstruction, mu, logvar)``; ``purify(x)``
    returns the reconstruction only, shaped like ``x``.
    """

    def __init__(self, in_features: int, hidden: int = 256, latent: int = 16, *,
                 quant_step: float | None = 0.5, lipschitz: bool = True,
                 variational: bool = True):
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden", hidden), ("latent", latent)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PriorlabError(f"purifier {name} must be an integer >= 1, got {value!r}")
        if quant_step is not None:
            uniform_quantise(torch.zeros(1), quant_step)  # validates the step
        self.in_features, self.quant_step, self.variational = in_features, quant_step, variational
        self.encoder = nn.Sequential(_linear(in_features, hidden, lipschitz), nn.ReLU(),
                                     _linear(hidden, hidden, lipschitz), nn.ReLU())
        self.to_mu = _linear(hidden, latent, lipschitz)
        self.to_logvar = nn.Linear(hidden, latent) if variational else None
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, in_features))

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise PriorlabError("purifier input must be a floating-point tensor of images")
        flat = x.reshape(len(x), -1)
        if flat.shape[1] != self.in_features:
            raise PriorlabError(f"purifier was built for {self.in_features} input features, got "
                                f"inputs of shape {tuple(x.shape)}; pass in_features="
                                f"{flat.shape[1]}")
        return flat

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(self._flat(x))
        return self.to_mu(h), (self.to_logvar(h) if self.variational else None)

    def latent(self, mu: torch.Tensor, logvar: torch.Tensor | None, *, sample: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
        z = mu
        if self.variational and sample:
            noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
            z = mu + torch.exp(0.5 * logvar) * noise
        return z if self.quant_step is None else uniform_quantise(z, self.quant_step)

    def forward(self, x: torch.Tensor, *, sample: bool = True,
                generator: torch.Generator | None = None):
        mu, logvar = self.encode(x)
        z = self.latent(mu, logvar, sample=sample, generator=generator)
        return torch.sigmoid(self.decoder(z)).reshape(x.shape), mu, logvar

    def purify(self, x: torch.Tensor, *, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return self(x, sample=sample, generator=generator)[0]

    @torch.no_grad()
    def encoder_lipschitz_bound(self) -> float:
        """Product of the spectral norms of the mean path's layers: an upper bound on the
        l2 Lipschitz constant of ``x -> mu`` (ReLU is 1-Lipschitz)."""
        layers = [m for m in self.encoder if isinstance(m, nn.Linear)] + [self.to_mu]
        bound = 1.0
        for layer in layers:
            bound *= float(torch.linalg.matrix_norm(layer.weight, ord=2))
        return bound


def purifier_loss(x: torch.Tensor, reconstruction: torch.Tensor, mu: torch.Tensor,
                  logvar: torch.Tensor | None, kl_weight: float = 1.0) -> torch.Tensor:
    """Negative ELBO per example: Bernoulli reconstruction (binary cross-entropy summed over
    pixels) plus ``kl_weight * KL(N(mu, exp(logvar)) || N(0, I))``; the KL is dropped for a
    plain autoencoder (``logvar is None``)."""
    who = "purifier_loss"
    kl_weight = check_number(kl_weight, "kl_weight", who=who, low=0)
    x = _check_unit_interval(x, "x", hint="the Bernoulli likelihood needs pixels in [0, 1]")
    reconstruction = _check_unit_interval(reconstruction, "reconstruction", like=x,
                                          hint="pass the decoder's sigmoid output, shaped like x")
    mu = check_tensor(mu, "mu", who=who, shape=(len(x), None), dtype="float", finite=True,
                      hint="pass the encoder's (batch, latent) means")
    if logvar is not None:
        check_tensor(logvar, "logvar", who=who, shape=tuple(mu.shape), dtype="float", finite=True,
                     hint="pass the encoder's log-variances, shaped like mu")
    recon = F.binary_cross_entropy(reconstruction.reshape(len(x), -1), x.reshape(len(x), -1),
                                   reduction="none").sum(1)
    if logvar is None:
        return recon.mean()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    loss = (recon + kl_weight * kl).mean()
    if not bool(torch.isfinite(loss)):  # mu^2 or exp(logvar) overflowed: not a usable posterior
        raise PriorlabError(f"{who}: the KL term of mu and logvar overflows "
                            f"{str(mu.dtype).removeprefix('torch.')} (largest |mu| "
                            f"{float(mu.abs().max()):.3g}, largest logvar {float(logvar.max()):.3g}); "
                            "check the encoder's outputs")
    return loss


def _check_unit_interval(t, name: str, *, hint: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """A non-empty (batch, ...) float tensor in [0, 1], with the shape and dtype of ``like``."""
    who = "purifier_loss"
    t = check_tensor(t, name, who=who, min_ndim=1, non_empty=True, hint=hint,
                     shape=None if like is None else tuple(like.shape),
                     dtype="float" if like is None else like.dtype, finite=True)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise PriorlabError(f"{who}: {name} must lie in [0, 1], got values in "
                            f"[{float(t.min()):.3g}, {float(t.max()):.3g}]; {hint}")
    return t


BACKWARDS = ("full", "identity")


class PurifiedClassifier(nn.Module):
    """``classifier(purifier.purify(x))``, and the gradient an adaptive attacker uses.

    ``backward="full"`` (default) differentiates through the whole purifier: encoder, the
    reparametrised sample, the quantiser's straight-through gradient (BPDA applied to the one
    non-differentiable layer, as Athalye et al. arXiv:1802.00420 prescribe) and decoder; EOT
    over the sampling is the attack's job (``pgd(..., eot=k)``). ``backward="identity"`` treats
    the whole purifier as the identity in the backward pass (a weaker BPDA that ignores what the
    encoder and decoder do to the gradient), kept to compare the two.
    """

    def __init__(self, purifier: QuantisedVAEPurifier, classifier: nn.Module, *,
                 backward: str = "full", sample: bool = True):
        super().__init__()
        if backward not in BACKWARDS:
            raise PriorlabError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
        self.purifier, self.classifier = purifier, classifier
        self.backward, self.sample = backward, sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        purified = self.purifier.purify(x, sample=self.sample)
        if self.backward == "identity":
            purified = x + (purified - x).detach()
        return self.classifier(purified)
