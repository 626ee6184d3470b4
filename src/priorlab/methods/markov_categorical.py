"""Paper card (seed 40): spectral alignment and information surplus of next-token representations.

Zhang, "A Markov Categorical Framework for Language Modeling", arXiv:2507.19247 (2025). NLL
training of a model with a linear-softmax head is argued to act as implicit spectral contrastive
learning: the representation ``h(c)`` of a context ``c`` aligns (after whitening) with the top
eigenfunctions of a *predictive similarity* operator on contexts, and the hidden state carries
an *information surplus* about tokens beyond the next one, which parallel drafting exploits.

The operator, as implemented here: two contexts are similar when they predict the same next
tokens, ``K(c, c') = sum_x p(x|c) p(x|c') / p(x)`` with ``p(x) = sum_c p(c) p(x|c)``, acting on
functions of the context as ``(T f)(c) = sum_c' p(c') K(c, c') f(c')`` — the positive-pair kernel
of spectral contrastive learning (HaoChen et al., 2021) with "same next token" as the pairing.
Its eigenfunctions are the left singular functions of the context/next-token CCA matrix
``p(c, x) / sqrt(p(c) p(x))``; the top one is the constant (eigenvalue 1).

- :func:`predictive_similarity`: the kernel ``K``.
- :func:`predictive_eigenfunctions`: the top non-constant eigenvalues and eigenfunctions of ``T``,
  orthonormal in L2(p(c)).
- :func:`eigenfunction_alignment`: the mean squared canonical correlation between features and
  those eigenfunctions (1 = the features' span contains them; whitening makes it invariant to
  any invertible linear map of the features).
- :func:`information_surplus`: how much better (in nats) a linear probe predicts a later token
  from the hidden state than from the next-token logits computed from it.
"""

from __future__ import annotations

import torch

from priorlab.diagnostics.probe import fit_linear_probe
from priorlab.errors import PriorlabError
from priorlab.registry import MethodCard, Paper, register


def _check_distribution(next_token_probs, context_probs) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(next_token_probs, torch.Tensor) or next_token_probs.dim() != 2 or \
            not next_token_probs.is_floating_point():
        got = (f"shape {tuple(next_token_probs.shape)}" if isinstance(next_token_probs, torch.Tensor)
               else type(next_token_probs).__name__)
        raise PriorlabError(f"next_token_probs must be a floating-point (contexts, vocab) tensor of "
                            f"p(x | c), got {got}")
    p = next_token_probs.detach().double()
    if not isinstance(context_probs, torch.Tensor) or tuple(context_probs.shape) != (p.shape[0],):
        got = (f"shape {tuple(context_probs.shape)}" if isinstance(context_probs, torch.Tensor)
               else type(context_probs).__name__)
        raise PriorlabError(f"context_probs must be a ({p.shape[0]},) tensor of p(c), one per row "
                            f"of next_token_probs, got {got}")
    w = context_probs.detach().double()
    for name, t in (("next_token_probs", p), ("context_probs", w)):
        if not torch.isfinite(t).all() or (t < 0).any():
            raise PriorlabError(f"{name} must hold finite, non-negative probabilities")
    if not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-6):
        raise PriorlabError("each row of next_token_probs must sum to 1 (a distribution over the "
                            "vocabulary); apply softmax to logits first")
    if abs(float(w.sum()) - 1) > 1e-6:
        raise PriorlabError(f"context_probs must sum to 1, got {float(w.sum()):.6g}")
    return p, w


def predictive_similarity(next_token_probs: torch.Tensor, context_probs: torch.Tensor) -> torch.Tensor:
    """``K[c, c'] = sum_x p(x|c) p(x|c') / p(x)``: (contexts, contexts), in float64."""
    p, w = _check_distribution(next_token_probs, context_probs)
    marginal = w @ p
    used = marginal > 0  # tokens that never occur contribute nothing
    return (p[:, used] / marginal[used]) @ p[:, used].T


def predictive_eigenfunctions(next_token_probs: torch.Tensor, context_probs: torch.Tensor,
                              k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` non-constant eigenpairs of the predictive-similarity operator ``T``.

    Returns ``(eigenvalues (k,), eigenfunctions (contexts, k))`` with eigenvalues descending and
    eigenfunctions orthonormal under p(c): ``sum_c p(c) f_i(c) f_j(c) = [i == j]`` (zero on
    contexts of probability 0). At most vocab - 1 of them are non-zero; ``k=None`` takes those.
    """
    p, w = _check_distribution(next_token_probs, context_probs)
    marginal = w @ p
    used = marginal > 0
    cca = w.sqrt()[:, None] * p[:, used] / marginal[used].sqrt()[None, :]
    u, s, _ = torch.linalg.svd(cca, full_matrices=False)
    available = len(s) - 1  # the first pair is the constant function, eigenvalue 1
    if k is None:
        k = available
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
        raise PriorlabError(f"k must be an integer in [1, {available}] (non-constant eigenfunctions "
                            f"of a {int(used.sum())}-token predictive operator), got {k!r}")
    inv_sqrt = torch.where(w > 0, w.clamp_min(1e-300).rsqrt(), torch.zeros_like(w))
    functions = u[:, 1:k + 1] * inv_sqrt[:, None]
    return s[1:k + 1] ** 2, functions


def _check_features(features: torch.Tensor, contexts: int) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or \
            not features.is_floating_point() or features.shape[0] != contexts:
        got = (f"{features.dtype} tensor of shape {tuple(features.shape)}"
               if isinstance(features, torch.Tensor) else type(features).__name__)
        raise PriorlabError(f"features must be a floating-point ({contexts}, dim) tensor, one row per "
                            f"context, got {got}")
    if not torch.isfinite(features).all():
        raise PriorlabError("features hold NaN or inf; alignment needs finite features")
    return features.detach().double()


def _weighted_basis(matrix: torch.Tensor, sqrt_w: torch.Tensor, rank_tol: float) -> torch.Tensor:
    """Orthonormal basis of the span of the p-weighted, centred columns of ``matrix``."""
    u, s, _ = torch.linalg.svd(sqrt_w[:, None] * matrix, full_matrices=False)
    keep = s > rank_tol * (s[0] if len(s) and s[0] > 0 else 1.0)
    return u[:, keep]


def eigenfunction_alignment(features: torch.Tensor, eigenfunctions: torch.Tensor,
                            context_probs: torch.Tensor, *, feature_components: int | None = None,
                            rank_tol: float = 1e-8) -> float:
    """Mean squared canonical correlation between ``features`` and ``eigenfunctions`` under p(c).

    Equivalently, the average over eigenfunctions of the R² of their best p-weighted linear fit
    from the features (with intercept): 1 when the features span all of them, 0 when they are
    uncorrelated. ``feature_components=m`` first keeps only the features' top ``m`` principal
    directions (p-weighted), asking whether the dominant directions carry the eigenfunctions.
    Features of full rank on the contexts would fit anything; that case is refused.
    """
    if not isinstance(context_probs, torch.Tensor) or context_probs.dim() != 1:
        raise PriorlabError("context_probs must be a 1-D tensor of p(c)")
    w = context_probs.detach().double()
    if not torch.isfinite(w).all() or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-6:
        raise PriorlabError("context_probs must hold finite, non-negative probabilities summing to 1")
    h = _check_features(features, len(w))
    if not isinstance(eigenfunctions, torch.Tensor) or eigenfunctions.dim() != 2 or \
            eigenfunctions.shape[0] != len(w) or eigenfunctions.shape[1] < 1:
        raise PriorlabError(f"eigenfunctions must be a ({len(w)}, k) tensor, as "
                            "predictive_eigenfunctions returns")
    f = eigenfunctions.detach().double()
    sqrt_w = w.sqrt()
    h = h - w @ h  # centre under p(c): the intercept is free
    f = f - w @ f
    if feature_components is not None:
        if isinstance(feature_components, bool) or not isinstance(feature_components, int) or \
                not 1 <= feature_components <= h.shape[1]:
            raise PriorlabError(f"feature_components must be an integer in [1, {h.shape[1]}], "
                                f"got {feature_components!r}")
        _, _, vh = torch.linalg.svd(sqrt_w[:, None] * h, full_matrices=False)
        h = h @ vh[:feature_components].T
    support = int((w > 0).sum())
    feature_basis = _weighted_basis(h, sqrt_w, rank_tol)
    if feature_basis.shape[1] >= support - 1:
        raise PriorlabError(f"the features have rank {feature_basis.shape[1]} on {support} contexts, "
                            "so they fit any function of the context and alignment is trivially 1; "
                            "use more contexts than feature dimensions")
    target_basis = _weighted_basis(f, sqrt_w, rank_tol)
    if target_basis.shape[1] == 0:
        raise PriorlabError("the eigenfunctions are constant on the contexts; nothing to align with")
    correlations = torch.linalg.svdvals(feature_basis.T @ target_basis)
    return float((correlations ** 2).sum() / target_basis.shape[1])


def information_surplus(hidden: torch.Tensor, logits: torch.Tensor, future: torch.Tensor, *,
                        sample_weight: torch.Tensor | None = None, test_fraction: float = 0.5,
                        l2: float = 1e-4) -> float:
    """Nats a linear probe gains by reading a later token from ``hidden`` rather than ``logits``.

    ``hidden`` (N, D) are hidden states and ``logits`` (N, V) the next-token logits the model
    computes from them (its next-token distribution, as log-probabilities). The result is the
    cross-entropy of a multinomial logistic probe for the later token from ``logits`` minus that
    from ``hidden``. Two modes:

    - ``future`` integer tokens (N,): sampled positions; both probes are fitted on the first
      ``1 - test_fraction`` of the rows and scored on the rest.
    - ``future`` distributions (N, V) of the later token given each row's context, with
      ``sample_weight`` = p(context): an exact population; both probes are fitted and scored on
      it (no sampling error, no held-out split needed).

    With a linear head the logits are a linear function of the hidden state, so the exact
    surplus is >= 0 (up to the optimiser's tolerance and ``l2``).
    """
    for name, t in (("hidden", hidden), ("logits", logits)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise PriorlabError(f"{name} must be a 2-D (samples, dim) tensor")
    n = hidden.shape[0]
    if logits.shape[0] != n:
        raise PriorlabError(f"hidden has {n} rows but logits has {logits.shape[0]}; pass one row "
                            "per position")
    if isinstance(future, torch.Tensor) and future.is_floating_point():
        if sample_weight is None:
            raise PriorlabError("future distributions describe a population: pass sample_weight "
                                "(the probability of each context)")
        losses = []
        for features in (logits, hidden):
            probe = fit_linear_probe(features, future, l2=l2, sample_weight=sample_weight)
            losses.append(probe.nll(features, future, sample_weight))
        return losses[0] - losses[1]
    if sample_weight is not None:
        raise PriorlabError("sample_weight goes with future distributions (an exact population); "
                            "sampled future tokens are weighted equally")
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise PriorlabError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    split = round(n * (1 - test_fraction))
    if split < 2 or n - split < 1:
        raise PriorlabError(f"{n} samples leave no room for both a training and a test split")
    if not isinstance(future, torch.Tensor) or tuple(future.shape) != (n,):
        raise PriorlabError(f"future must be integer token ids of shape ({n},) or distributions "
                            f"of shape ({n}, vocab)")
    classes = max(int(future.max()), 1) + 1
    losses = []
    for features in (logits, hidden):
        probe = fit_linear_probe(features[:split], future[:split], l2=l2, num_classes=classes)
        losses.append(probe.nll(features[split:], future[split:]))
    return losses[0] - losses[1]


USAGE = """\
import torch
import torch.nn.functional as F
from priorlab.data.markov import noisy_cycle
from priorlab.methods.markov_categorical import (eigenfunction_alignment,
                                                 predictive_eigenfunctions)

source = noisy_cycle(6, 4)
windows = source.windows(4)                       # every context of 4 tokens, exact p(x | c)
eigenvalues, eigenfunctions = predictive_eigenfunctions(windows.next_token, windows.prob, k=3)
x = F.one_hot(windows.tokens, 4).float().flatten(1)
torch.manual_seed(0)
body = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())
head = torch.nn.Linear(16, 4)
opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-2)
print("at init:", eigenfunction_alignment(body(x), eigenfunctions, windows.prob))
for step in range(200):                           # exact NLL over all contexts
    loss = -(windows.prob[:, None].float() * windows.next_token.float()
             * F.log_softmax(head(body(x)), 1)).sum()
    opt.zero_grad(); loss.backward(); opt.step()
print("trained:", eigenfunction_alignment(body(x), eigenfunctions, windows.prob))
"""

CARD = register(MethodCard(
    id="predictive-alignment",
    name="Predictive-similarity spectral alignment and information surplus",
    family="T: training dynamics",
    kind="function",
    paper=Paper(
        title="A Markov Categorical Framework for Language Modeling", authors="Yifan Zhang",
        venue="arXiv preprint (ICML 2025 AI4Math workshop)", year=2025, arxiv="2507.19247",
        code_url="",
        licence="no official code (github.com/yifanzhang-pro/lm-theory holds only the PDF)",
        seed_id=40),
    summary=("Measures what the paper predicts NLL training does to representations: contexts "
             "are similar when they predict the same next tokens, K(c,c') = sum_x p(x|c)p(x|c')/p(x); "
             "the features' whitened span should contain the top eigenfunctions of that operator "
             "(mean squared canonical correlation -> 1), and hidden states should hold more "
             "about the token after next than their next-token distribution does (surplus > 0)."),
    usage=USAGE,
    hyperparameters=(
        "k: how many non-constant eigenfunctions (at most vocab - 1). feature_components: "
        "restrict features to their top principal directions first (None = whitened CCA, the "
        "paper's notion). rank_tol=1e-8: relative singular-value cut for the spans. "
        "information_surplus: l2=1e-4 on standardised features; with sampled tokens a "
        "test_fraction=0.5 held-out split (probe overfitting biases the surplus down by about "
        "dim x vocab / (2 n) nats), with exact future distributions and sample_weight=p(c) no "
        "split and no sampling error."),
    deviations=(
        "No code exists and the paper's exact definitions could not be retrieved offline; from "
        "the abstracts (v1-v5) we implement: the predictive-similarity operator as the "
        "'same next token' positive-pair kernel of spectral contrastive learning (its "
        "eigenfunctions are those of the context/next-token CCA, matching v5's 'generalized "
        "CCA/eigenproblem ... after whitening'); alignment as mean squared canonical "
        "correlation; the information surplus as the difference of linear-probe cross-entropies "
        "for x_{t+2} from h_t vs from the logits of p(x_{t+1}|h_t) (usable, not Shannon, "
        "information: for a generic source the next-token distribution identifies the context, "
        "so the Shannon surplus would be 0)."),
    claim_scope=(
        "The paper is theoretical (no experiments on real models in the abstract). Here: a "
        "known hidden Markov source whose every context of 5 tokens is enumerable, so the "
        "operator and its eigenfunctions are exact; an MLP next-token model trained on the "
        "exact NLL vs the same model at initialisation."),
    component=eigenfunction_alignment,
    adapter=None,
    example=None,
    reproduction="p040_markov",
    tags=("representation", "spectral", "probe", "diagnostic"),
))
