"""Bridges that run priorlab adapters inside other trainers (extras ``[lightning]`` and ``[hf]``).

Neither a Lightning callback nor a Hugging Face ``TrainerCallback`` can add a term to the loss, so
each bridge has two halves sharing one :class:`AdapterRunner`: a callback for the gradient, step
and epoch hooks, and a loss half (a LightningModule mixin, an HF ``compute_loss_func``) that adds
the adapters' named loss terms and logs each of them.
"""

from priorlab.integrations.runner import AdapterRunner

__all__ = ["AdapterRunner"]
