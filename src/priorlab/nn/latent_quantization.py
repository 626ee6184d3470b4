"""Latent quantisation: per-latent learnable scalar codebooks with a straight-through gradient.

From "Disentanglement via Latent Quantization" (Kyle Hsu, Will Dorrell, James Whittington, Jiajun
Wu, Chelsea Finn; NeurIPS 2023, arXiv 2305.18378), Section 4, following the official code
(kylehkhsu/latent_quantization, ``disentangle/latents/quantized.py``, ``models/quantized_ae.py``).
Latent j has its own scalar codebook V_j = (v_j1 .. v_jM) (M = 10 values, initialised to
``linspace(-0.5, 0.5, M)``, learnable). An encoder output z_j is snapped to its nearest value,

    q(z)_j = argmin_{v in V_j} |z_j - v|,

the decoder sees ``z + sg(q(z) - z)`` (straight-through: gradients pass to the encoder as if
the quantiser were the identity), and the codebooks and encoder are pulled together by

    L_quantise = mean_j (sg(z_j) - q(z)_j)^2      (moves the values; weight 0.01 by default)
    L_commit   = mean_j (z_j - sg(q(z)_j))^2      (moves the encoder; weight 0.01 by default)

averaged over the batch. The paper trains the whole model with AdamW (weight decay 0.1).
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


class QuantizedLatent(nn.Module):
    """Scalar quantiser of ``num_latents`` latents, each with ``num_values`` (learnable) values.

    ``forward(z)`` returns ``(z_hat, losses)``: the straight-through quantised latents (n, L) and
    ``{"quantization": weighted L_quantise, "commitment": weighted L_commit}`` (scalar tensors),
    the interface :class:`priorlab.nn.latent_autoencoder.Autoencoder` expects of a bottleneck.
    """

    def __init__(self, num_latents: int, num_values: int = 10, *, learnable: bool = True,
                 quantization_weight: float = 0.01, commitment_weight: float = 0.01,
                 init_range: float = 0.5):
        super().__init__()
        who = "QuantizedLatent"
        self.num_latents = check_number(num_latents, "num_latents", who=who, low=1, integer=True)
        self.num_values = check_number(num_values, "num_values", who=who, low=2, integer=True)
        self.quantization_weight = check_number(quantization_weight, "quantization_weight",
                                                who=who, low=0)
        self.commitment_weight = check_number(commitment_weight, "commitment_weight", who=who, low=0)
        init_range = check_number(init_range, "init_range", who=who, low=0, low_open=True)
        values = torch.linspace(-init_range, init_range, self.num_values).repeat(self.num_latents, 1)
        self.values = nn.Parameter(values, requires_grad=bool(learnable))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codebook value of each latent and its index, both (n, L); no gradient trick."""
        check_tensor(z, "z", who="QuantizedLatent", shape=(None, self.num_latents), dtype="float",
                     finite=True)
        index = (z.unsqueeze(-1) - self.values).abs().argmin(dim=-1)
        quantized = self.values.expand(len(z), -1, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return quantized, index

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the losses are batch means: an empty batch has none
        check_tensor(z, "z", who="QuantizedLatent", non_empty=True,
                     hint=f"pass a batch of latents, shape (n, {self.num_latents}) with n >= 1")
        quantized, _ = self.quantize(z)
        z_hat = z + (quantized - z).detach()
        losses = {
            "quantization": self.quantization_weight * (z.detach() - quantized).pow(2).mean(),
            "commitment": self.commitment_weight * (z - quantized.detach()).pow(2).mean(),
        }
        if not all(torch.isfinite(loss) for loss in losses.values()):
            raise PriorlabError(f"QuantizedLatent: the squared distance of z to its codebook values "
                                f"overflows {z.dtype} (z up to {z.abs().max().item():.3g}); "
                                "rescale the latents")
        return z_hat, losses

    def extra_repr(self) -> str:
        return (f"num_latents={self.num_latents}, num_values={self.num_values}, "
                f"learnable={self.values.requires_grad}")
