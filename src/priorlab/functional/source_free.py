"""Losses for source-free domain adaptation: SF(DA)^2 and the SHOT and AaD baselines.

SF(DA)^2 — Hwang et al., "SF(DA)^2: Source-free Domain Adaptation Through the Lens of
Data Augmentation", ICLR 2024 (arXiv 2312.08566; code shinyflight/SFDA2). The adaptation
loss is ``L_SNC + alpha_1 L_IFA + alpha_2 L_FD``:

* spectral neighbourhood clustering (SNC): attract each target prediction to the predictions of
  its K nearest neighbours in a feature bank (the augmentation graph), and disperse the
  predictions of a batch with the *squared* inner products (spectral contrastive loss)
  -> :func:`neighbour_attraction_loss` + :func:`dispersion_loss` (``squared=True``);
* implicit feature augmentation (IFA): the closed-form upper bound of the expected loss when
  every feature is augmented by N(0, lambda Sigma_y) with the class-conditional covariance of its
  pseudo-class (ISDA-style) -> :func:`implicit_feature_augmentation_loss` with the online
  estimator :class:`ClassCovariance`;
* feature disentanglement (FD): push apart (cosine distance) the covariances of classes whose
  mean predictions overlap -> :func:`covariance_disentanglement_loss`.

Baselines: AaD (Yang et al., "Attracting and Dispersing", NeurIPS 2022, arXiv 2205.04183) is the
same attraction with a *linear* dispersion (``squared=False``); SHOT (Liang et al., ICML 2020,
arXiv 2002.08546) is information maximisation (:func:`information_maximisation_loss`) plus
cross-entropy on self-supervised pseudo-labels (:func:`shot_pseudo_labels`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor


def _check_probs(name: str, probs: torch.Tensor, ndim: int = 2) -> None:
    check_tensor(probs, name, ndim=ndim, dtype="float", finite=True, non_empty=True)
    if probs.min() < 0 or probs.max() > 1:
        raise PriorlabError(f"{name} must be probabilities in [0, 1] (softmax outputs), got values in "
                            f"[{probs.min().item():.3g}, {probs.max().item():.3g}]")


def decayed_weight(progress: float, alpha: float = 1.0, beta: float = 5.0) -> float:
    """Dispersion weight ``alpha (1 + 10 p)^-beta`` at training progress p in [0, 1] (AaD and
    SF(DA)^2 code: the repulsion fades so that clusters can form)."""
    check_number(progress, "progress", low=0.0, high=1.0)
    check_number(alpha, "alpha", low=0.0)
    check_number(beta, "beta", low=0.0)
    return alpha * (1 + 10 * progress) ** (-beta)


def neighbour_attraction_loss(probs: torch.Tensor, neighbour_probs: torch.Tensor) -> torch.Tensor:
    """``-mean_i sum_k p_i . p_{n_k(i)}`` (SF(DA)^2 Eq. for SNC, AaD Eq. 5), neighbours detached.

    probs: (B, C) softmax outputs; neighbour_probs: (B, K, C) stored predictions of the K nearest
    neighbours. The official codes write it as ``F.kl_div(p, q)`` with probabilities (not logs) as
    input, which equals this loss plus the (constant) negative entropy of q.
    """
    _check_probs("probs", probs)
    _check_probs("neighbour_probs", neighbour_probs, ndim=3)
    if neighbour_probs.shape[0] != probs.shape[0] or neighbour_probs.shape[2] != probs.shape[1]:
        raise PriorlabError(f"neighbour_probs must be (B, K, C) = ({probs.shape[0]}, K, "
                            f"{probs.shape[1]}), got {tuple(neighbour_probs.shape)}")
    return -(neighbour_probs.detach() * probs.unsqueeze(1)).sum(dim=(1, 2)).mean()


def dispersion_loss(probs: torch.Tensor, squared: bool = True) -> torch.Tensor:
    """``mean_i sum_{j != i} (p_i . p_j)^s`` over a batch: s = 2 for SF(DA)^2 (the spectral
    contrastive negative term), s = 1 for AaD."""
    _check_probs("probs", probs)
    if probs.shape[0] < 2:
        raise PriorlabError("dispersion needs a batch of at least 2 predictions")
    dots = probs @ probs.T
    if squared:
        dots = dots ** 2
    off_diagonal = dots - torch.diag_embed(torch.diagonal(dots))
    return off_diagonal.sum(-1).mean()


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int,
                       exclude_self: bool = True) -> torch.Tensor:
    """Indices (B, k) of the k most cosine-similar bank rows to each query (both L2-normalised
    here). With ``exclude_self`` the best match (the query's own bank entry) is dropped, as in
    the official code, which writes the batch into the bank before searching."""
    check_tensor(queries, "queries", ndim=2)
    check_tensor(bank, "bank", ndim=2)
    if not isinstance(k, int) or k < 1 or k + int(exclude_self) > bank.shape[0]:
        raise PriorlabError(f"k must be an int in [1, {bank.shape[0] - int(exclude_self)}], got {k!r}")
    similarity = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    index = similarity.topk(k + int(exclude_self), dim=1).indices
    return index[:, 1:] if exclude_self else index


class ClassCovariance:
    """Online class-conditional mean and covariance of features under (pseudo-)labels.

    The running estimate is merged with each batch's per-class statistics weighted by counts
    (the ISDA estimator the official code uses). The returned covariance keeps the gradient of
    the current batch (the history is detached), as in the official code, so the FD loss can
    shape the features.
    """

    def __init__(self, num_classes: int, dim: int):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise PriorlabError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not isinstance(dim, int) or dim < 1:
            raise PriorlabError(f"dim must be a positive int, got {dim!r}")
        self.num_classes, self.dim = num_classes, dim
        self.count = torch.zeros(num_classes)
        self.mean = torch.zeros(num_classes, dim)
        self.covariance = torch.zeros(num_classes, dim, dim)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_tensor(features, "features", ndim=2, dtype="float", finite=True)
        check_tensor(labels, "labels", ndim=1)
        if features.shape != (labels.shape[0], self.dim):
            raise PriorlabError(f"features must be (B, {self.dim}) with B = len(labels), "
                                f"got {tuple(features.shape)} and {tuple(labels.shape)}")
        if labels.dtype != torch.long or labels.min() < 0 or labels.max() >= self.num_classes:
            raise PriorlabError(f"labels must be int64 in [0, {self.num_classes})")
        onehot = F.one_hot(labels, self.num_classes).to(features.dtype)  # (B, C)
        batch_count = onehot.sum(0)
        safe = batch_count.clamp(min=1)
        batch_mean = onehot.T @ features / safe[:, None]  # (C, A)
        centred = onehot[:, :, None] * (features[:, None, :] - batch_mean[None])  # (B, C, A)
        batch_cov = torch.einsum("bca,bcd->cad", centred, centred) / safe[:, None, None]
        weight = batch_count / (batch_count + self.count).clamp(min=1)  # 0 where unseen
        shift = self.mean - batch_mean
        cross = (weight * (1 - weight))[:, None, None] * shift[:, :, None] * shift[:, None, :]
        covariance = (self.covariance * (1 - weight)[:, None, None]
                      + batch_cov * weight[:, None, None] + cross)
        self.mean = (self.mean * (1 - weight)[:, None] + batch_mean * weight[:, None]).detach()
        self.count = self.count + batch_count
        self.covariance = covariance.detach()
        return covariance


def implicit_feature_augmentation_loss(logits: torch.Tensor, weight: torch.Tensor,
                                       covariance: torch.Tensor, ratio: float) -> torch.Tensor:
    """SF(DA)^2 IFA: closed-form bound of the expected loss over features augmented with
    N(0, ratio * Sigma_{y_hat}) (paper Sec. 3.3; official ``IFA``).

    For every sample n and every class i the logits are shifted to
    ``z_c + ratio/2 (w_c - w_i)^T Sigma_{y_hat(n)} (w_c - w_i)`` and the loss is
    ``2 sum_i CE(shifted, i)``, averaged over the batch. logits: (B, C); weight: (C, A) classifier
    weights; covariance: (C, A, A) class covariances; ratio >= 0 (lambda_0 * progress).
    """
    check_tensor(logits, "logits", ndim=2, dtype="float", finite=True)
    check_tensor(weight, "weight", ndim=2)
    check_tensor(covariance, "covariance", ndim=3, finite=True)
    check_number(ratio, "ratio", low=0.0)
    c, a = weight.shape
    if logits.shape[1] != c or covariance.shape != (c, a, a):
        raise PriorlabError(f"shapes disagree: logits {tuple(logits.shape)}, weight "
                            f"{tuple(weight.shape)}, covariance {tuple(covariance.shape)}")
    pseudo = logits.argmax(1).detach()
    diff = weight[None, :, :] - weight[:, None, :]  # (i, c, A): w_c - w_i
    # quad[k, i, c] = (w_c - w_i)^T Sigma_k (w_c - w_i)
    quad = torch.einsum("ica,kab,icb->kic", diff, covariance, diff)
    shifted = logits[:, None, :] + 0.5 * ratio * quad[pseudo]  # (B, i, c)
    targets = torch.arange(c).expand(logits.shape[0], c)
    ce = F.cross_entropy(shifted.reshape(-1, c), targets.reshape(-1), reduction="none")
    return 2 * ce.view(-1, c).sum(1).mean()


def covariance_disentanglement_loss(covariance: torch.Tensor, mean_scores: torch.Tensor) -> torch.Tensor:
    """SF(DA)^2 FD: ``-1/2 sum_{i != j} (m_i . m_j) (1 - cos(Sigma_i, Sigma_j))``.

    covariance: (C, A, A) class covariances; mean_scores: (C, C) mean prediction of the samples
    pseudo-labelled i (detached): classes the model confuses get their covariances pushed apart.
    """
    check_tensor(covariance, "covariance", ndim=3)
    check_tensor(mean_scores, "mean_scores", ndim=2)
    c = covariance.shape[0]
    if mean_scores.shape != (c, c):
        raise PriorlabError(f"mean_scores must be ({c}, {c}), got {tuple(mean_scores.shape)}")
    overlap = (mean_scores @ mean_scores.T).detach() * (1 - torch.eye(c))
    flat = covariance.reshape(c, -1)
    norms = flat.norm(dim=1)
    cosine = (flat @ flat.T) / (norms[:, None] * norms[None, :] + 1e-12)
    return -((1 - cosine) * overlap).sum() / 2


def information_maximisation_loss(probs: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """SHOT's L_ent + L_div: mean per-sample entropy minus the entropy of the mean prediction."""
    _check_probs("probs", probs)
    entropy = -(probs * torch.log(probs + eps)).sum(1).mean()
    mean = probs.mean(0)
    return entropy + (mean * torch.log(mean + eps)).sum()


def shot_pseudo_labels(features: torch.Tensor, probs: torch.Tensor, rounds: int = 2) -> torch.Tensor:
    """SHOT's self-supervised pseudo-labels (Sec. 3.3): class centroids weighted by the
    predictions, nearest centroid in cosine distance, then ``rounds - 1`` k-means refinements
    with hard labels. Features get a constant 1 appended and are L2-normalised first, as in the
    official code. Returns (N,) int64 labels."""
    check_tensor(features, "features", ndim=2)
    _check_probs("probs", probs)
    if features.shape[0] != probs.shape[0]:
        raise PriorlabError("features and probs must have the same number of rows")
    if not isinstance(rounds, int) or rounds < 1:
        raise PriorlabError(f"rounds must be an int >= 1, got {rounds!r}")
    f = torch.cat([features, torch.ones(len(features), 1)], dim=1)
    f = F.normalize(f, dim=1)
    weights = probs
    labels = probs.argmax(1)
    for _ in range(rounds):
        centroids = weights.T @ f / (weights.sum(0)[:, None] + 1e-8)
        present = weights.sum(0) > 0  # empty clusters cannot attract samples
        similarity = f @ F.normalize(centroids, dim=1).T
        similarity[:, ~present] = -torch.inf
        labels = similarity.argmax(1)
        weights = F.one_hot(labels, probs.shape[1]).to(f.dtype)
    return labels


VARIANTS = ("sfda2", "aad")


class NeighbourhoodLoss:
    """The whole target objective of SF(DA)^2 (``variant="sfda2"``) or AaD (``"aad"``), with the
    memory banks both keep: L2-normalised bottleneck features and softmax scores of every
    target sample, refreshed for each batch before its neighbours are looked up.

    Per step (``progress`` = step / total steps):
    ``L = attraction + alpha(1+10p)^-beta dispersion [+ alpha_1 IFA + alpha_2 FD for sfda2]``,
    dispersion squared for sfda2 and linear for AaD; IFA uses ``ratio = lambda_0 * p``.
    Defaults are the official VisDA ones (K=5, alpha=1, beta=5, alpha_1=1e-4, alpha_2=10,
    lambda_0=5). Call :meth:`fill_banks` once with the source model's outputs on all target
    samples, then ``loss, terms = objective(indices, features, logits, classifier_weight, p)``.
    """

    def __init__(self, num_samples: int, num_classes: int, feature_dim: int, *,
                 variant: str = "sfda2", k: int = 5, alpha: float = 1.0, beta: float = 5.0,
                 alpha_1: float = 1e-4, alpha_2: float = 10.0, lambda_0: float = 5.0):
        if variant not in VARIANTS:
            raise did_you_mean(variant, VARIANTS, "variant")
        for name, value in (("num_samples", num_samples), ("k", k)):
            check_number(value, name, low=1, integer=True)
        if k >= num_samples:
            raise PriorlabError(f"k={k} must be smaller than num_samples={num_samples}")
        for name, value in (("alpha", alpha), ("beta", beta), ("alpha_1", alpha_1),
                            ("alpha_2", alpha_2), ("lambda_0", lambda_0)):
            check_number(value, name, low=0.0)
        self.variant, self.k = variant, k
        self.alpha, self.beta = alpha, beta
        self.alpha_1, self.alpha_2, self.lambda_0 = alpha_1, alpha_2, lambda_0
        self.num_classes = num_classes
        self.covariance = ClassCovariance(num_classes, feature_dim)
        self.feature_bank = torch.zeros(num_samples, feature_dim)
        self.score_bank = torch.full((num_samples, num_classes), 1.0 / num_classes)

    def fill_banks(self, features: torch.Tensor, probs: torch.Tensor) -> None:
        check_tensor(features, "features", shape=tuple(self.feature_bank.shape), finite=True)
        _check_probs("probs", probs)
        if probs.shape != self.score_bank.shape:
            raise PriorlabError(f"probs must be {tuple(self.score_bank.shape)}, got {tuple(probs.shape)}")
        self.feature_bank = F.normalize(features.detach(), dim=1).clone()
        self.score_bank = probs.detach().clone()

    def __call__(self, indices: torch.Tensor, features: torch.Tensor, logits: torch.Tensor,
                 classifier_weight: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        check_tensor(indices, "indices", ndim=1, dtype="integer")
        check_tensor(logits, "logits", ndim=2, shape=(len(indices), self.num_classes), finite=True)
        probs = logits.softmax(1)
        with torch.no_grad():
            self.feature_bank[indices] = F.normalize(features.detach(), dim=1)
            self.score_bank[indices] = probs.detach()
            near = nearest_neighbours(features.detach(), self.feature_bank, self.k)
        attraction = neighbour_attraction_loss(probs, self.score_bank[near])
        dispersion = dispersion_loss(probs, squared=self.variant == "sfda2")
        weight = decayed_weight(progress, self.alpha, self.beta)
        loss = attraction + weight * dispersion
        terms = {"attraction": float(attraction.detach()), "dispersion": float(dispersion.detach())}
        if self.variant == "sfda2":
            pseudo = logits.argmax(1).detach()
            covariance = self.covariance.update(features, pseudo)
            ifa = implicit_feature_augmentation_loss(logits, classifier_weight, covariance,
                                                     self.lambda_0 * progress)
            bank_labels = self.score_bank.argmax(1)
            mean_scores = torch.stack([
                self.score_bank[bank_labels == c].mean(0) if (bank_labels == c).any()
                else torch.zeros(self.num_classes) for c in range(self.num_classes)])
            fd = covariance_disentanglement_loss(covariance, mean_scores)
            loss = loss + self.alpha_1 * ifa + self.alpha_2 * fd
            terms |= {"ifa": float(ifa.detach()), "fd": float(fd.detach())}
        return loss, terms
