"""InfoMEC: information-based modularity, explicitness and compactness of a representation.

From "Disentanglement via Latent Quantization" (Hsu, Dorrell, Whittington, Wu, Finn; NeurIPS
2023, arXiv 2305.18378), Section 5, following the official code (kylehkhsu/latent_quantization,
``disentangle/metrics/infomec.py``). With K factors ("sources") s_i and L latents z_j:

- ``NMI[i, j] = I(s_i; z_j) / H(s_i)``. Discrete latents: the plug-in mutual information of the
  two label sequences. Continuous latents: the k-nearest-neighbour estimate
  (``sklearn.feature_selection.mutual_info_classif``, k = 10) on standardised latents.
- Latents are *active* when their range exceeds 1/20 of the largest range (continuous), or is
  non-zero (discrete); InfoM and InfoC use active latents only.
- ``InfoM = (mean_j max_i NMI[i, j] / sum_i NMI[i, j] - 1/K) / (1 - 1/K)``: each latent informs
  about one factor only.
- ``InfoC = (mean_i max_j NMI[i, j] / sum_j NMI[i, j] - 1/L_a) / (1 - 1/L_a)``: each factor is
  captured by one latent.
- ``InfoE = mean_i (H_null(s_i) - CE(s_i | z)) / H_null(s_i)``: the share of each factor's
  entropy a linear (multinomial logistic) model of all latents removes; ``CE`` is its in-sample
  cross-entropy and ``H_null`` that of the same model fitted on constant inputs. Latents enter
  standardised (continuous) or one-hot (discrete). Like the official code, the classes are
  weighted to balance and the fit has no penalty.

InfoE is fitted and scored on the same samples, as in the official code, so it is biased upward
by overfitting, much more for discrete latents (L x values one-hot features) than for continuous
ones (L features): random 10-latent x 10-value codes score about 0.14 on 1000 samples and 0.03 on
4000 (continuous noise: 0.015 and 0.004). Compare representations on several thousand samples.

Choices where the official code returns NaN: a latent (factor) whose NMIs are all zero counts as
perfectly non-modular (non-compact), i.e. contributes 0; with a single active latent InfoC is 1.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn import feature_selection, linear_model, metrics, preprocessing
from sklearn.exceptions import ConvergenceWarning

from priorlab.errors import PriorlabError
from priorlab.validation import check_number

# columns with at most this many distinct values are treated as discrete when not told
DISCRETE_MAX_VALUES = 32


def _as_2d(x, name: str, *, integer: bool) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise PriorlabError(f"info_mec: {name} must be a tensor or array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise PriorlabError(f"info_mec: {name} must have shape (samples >= 2, columns >= 1), "
                            f"got {tuple(x.shape)}")
    if integer and not np.issubdtype(x.dtype, np.integer):
        raise PriorlabError(f"info_mec: {name} must hold integer value indices, got {x.dtype}")
    if not integer and not (np.issubdtype(x.dtype, np.number) and np.isfinite(x).all()):
        raise PriorlabError(f"info_mec: {name} must be real and finite (no NaN/inf)")
    return x


def _labels(column: np.ndarray) -> np.ndarray:
    return preprocessing.LabelEncoder().fit_transform(column)


def normalised_mutual_information(latents: np.ndarray, factors: np.ndarray, *, discrete: bool,
                                  n_neighbors: int = 10, seed: int = 0) -> np.ndarray:
    """``NMI[i, j] = I(s_i; z_j) / H(s_i)``, shape (K, L); see the module docstring."""
    nmi = np.empty((factors.shape[1], latents.shape[1]))
    if discrete:
        codes = [_labels(latents[:, j]) for j in range(latents.shape[1])]
    else:
        scaled = preprocessing.StandardScaler().fit_transform(latents.astype(np.float64))
    for i in range(factors.shape[1]):
        source = _labels(factors[:, i])
        entropy = metrics.mutual_info_score(source, source)
        if entropy <= 0:
            raise PriorlabError(f"info_mec: factor column {i} takes a single value; every factor "
                                "must vary for its mutual information to be normalised")
        if discrete:
            mi = [metrics.mutual_info_score(source, code) for code in codes]
        else:
            mi = feature_selection.mutual_info_classif(scaled, source, discrete_features=False,
                                                       n_neighbors=n_neighbors, random_state=seed)
        nmi[i] = np.clip(np.asarray(mi) / entropy, 0.0, 1.0)
    return nmi


def _concentration(nmi: np.ndarray, axis: int) -> float:
    """Mean over the other axis of max/sum along ``axis``, rescaled so chance is 0 and one-hot 1."""
    count = nmi.shape[axis]
    if count == 1:
        return 1.0
    total = nmi.sum(axis=axis)
    share = np.where(total > 0, nmi.max(axis=axis) / np.where(total > 0, total, 1.0), 1.0 / count)
    return float((share.mean() - 1.0 / count) / (1.0 - 1.0 / count))


def _cross_entropy(inputs: np.ndarray, target: np.ndarray, max_iter: int) -> float:
    model = linear_model.LogisticRegression(C=np.inf, class_weight="balanced", max_iter=max_iter,
                                            tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(inputs, target)
    return float(metrics.log_loss(target, model.predict_proba(inputs), labels=model.classes_))


def predictive_information(latents: np.ndarray, factors: np.ndarray, *, discrete: bool,
                           max_iter: int = 100) -> np.ndarray:
    """Per factor, the share of its (null-model) entropy a logistic model of the latents removes."""
    if discrete:
        inputs = preprocessing.OneHotEncoder().fit_transform(latents).toarray()
    else:
        inputs = preprocessing.StandardScaler().fit_transform(latents.astype(np.float64))
    null = np.zeros((len(latents), 1))
    shares = []
    for i in range(factors.shape[1]):
        source = _labels(factors[:, i])
        marginal = _cross_entropy(null, source, max_iter)
        shares.append((marginal - _cross_entropy(inputs, source, max_iter)) / marginal)
    return np.clip(np.asarray(shares), 0.0, 1.0)


def info_mec(latents, factors, factor_sizes=None, *, discrete_latents: bool | None = None,
             n_neighbors: int = 10, active_fraction: float = 1 / 20, max_iter: int = 100,
             seed: int = 0) -> dict:
    """InfoM, InfoE and InfoC of ``latents`` (n, L) with respect to ``factors`` (n, K).

    Args:
        latents: real tensor/array (n, L): the representation (e.g. encoder means, or the
            quantised values of a QLAE).
        factors: integer tensor/array (n, K >= 2) of factor value indices.
        factor_sizes: optional number of values of each factor, to check ``factors`` against.
        discrete_latents: treat latents as discrete labels; by default True when every latent
            column has at most ``DISCRETE_MAX_VALUES`` distinct values (e.g. quantised latents).
        n_neighbors: k of the k-NN mutual information estimate (continuous latents).
        active_fraction: continuous latents whose range is below this fraction of the largest
            range are inactive.
        max_iter: L-BFGS iterations of each logistic fit (the official code's 100).
        seed: seed of the k-NN estimator's jitter.

    Returns:
        ``{"info_m", "info_e", "info_c"}`` (floats in [0, 1]) plus ``"nmi"`` (K, L array),
        ``"active_latents"`` (bool array (L,)) and ``"discrete_latents"``.
    """
    z = _as_2d(latents, "latents", integer=False)
    s = _as_2d(factors, "factors", integer=True)
    if len(z) != len(s):
        raise PriorlabError(f"info_mec: latents has {len(z)} samples but factors has {len(s)}")
    if s.shape[1] < 2:
        raise PriorlabError("info_mec: InfoM needs at least 2 factors, got 1")
    if factor_sizes is not None:
        sizes = np.asarray(factor_sizes)
        if sizes.shape != (s.shape[1],):
            raise PriorlabError(f"info_mec: factor_sizes must list {s.shape[1]} sizes, got "
                                f"{list(factor_sizes)}")
        if (s < 0).any() or (s >= sizes).any():
            raise PriorlabError(f"info_mec: factors must be indices in [0, size) for sizes "
                                f"{list(factor_sizes)}")
    n_neighbors = check_number(n_neighbors, "n_neighbors", who="info_mec", low=1, integer=True)
    active_fraction = check_number(active_fraction, "active_fraction", who="info_mec", low=0,
                                   high=1, high_open=True)
    max_iter = check_number(max_iter, "max_iter", who="info_mec", low=1, integer=True)
    if discrete_latents is None:
        discrete_latents = all(len(np.unique(z[:, j])) <= DISCRETE_MAX_VALUES
                               for j in range(z.shape[1]))
    nmi = normalised_mutual_information(z, s, discrete=discrete_latents, n_neighbors=n_neighbors,
                                        seed=seed)
    ranges = z.max(axis=0) - z.min(axis=0)
    active = ranges > (0 if discrete_latents else active_fraction * ranges.max())
    if active.any():
        info_m = _concentration(nmi[:, active], axis=0)
        info_c = _concentration(nmi[:, active], axis=1)
    else:  # a constant representation carries nothing
        info_m = info_c = 0.0
    info_e = float(predictive_information(z, s, discrete=discrete_latents, max_iter=max_iter).mean())
    return {"info_m": info_m, "info_e": info_e, "info_c": info_c, "nmi": nmi,
            "active_latents": active, "discrete_latents": bool(discrete_latents)}
