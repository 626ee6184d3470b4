"""Fuzz every registered component and functional loss that takes tensors (issue 16).

Each target starts from valid arguments (batch sizes 0-7, 1-5 classes, random scales) and, in
most examples, gets one argument changed (see fuzzkit). The outcome must be a clear error that
names an argument, or a finite result. A new card must be added to TARGETS_BY_CARD or EXCUSED.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from fuzzkit import Target, check_outcome, labels, mutate_argument, probabilities, randn
from hypothesis import given
from hypothesis import strategies as st

import targets_round3 as round3
import targets_round4 as round4

from priorlab.continual.regularisers import feature_distillation, prediction_distillation
from priorlab.fields.pfnr import winning_mask
from priorlab.continual.prompts import energy_margin_loss
from priorlab.functional.attention_sparsity import attention_log_penalty
from priorlab.functional.core_regularisers import context_embedding_loss
from priorlab.functional.time_edit import closed_form_edit
from priorlab.functional.tokenizer_regularisers import codebook_entropy_loss, semantic_alignment_loss
from priorlab.functional.contrastive import spectral_contrastive_loss, supcon_loss
from priorlab.functional.coteaching import coteaching_loss, small_loss_indices
from priorlab.functional.dispreference import d2o_loss
from priorlab.functional.distill import distillation_loss
from priorlab.functional.elr import elr_loss, elr_regularizer, elr_update_targets
from priorlab.functional.gg_prior import backslash_penalty, estimate_gg_shape
from priorlab.functional.grpo import grpo_loss
from priorlab.functional.prompt_regularisers import promptsrc_loss
from priorlab.functional.source_free import dispersion_loss, information_maximisation_loss
from priorlab.functional.pskd import pskd_loss, pskd_targets, soft_cross_entropy
from priorlab.functional.rrcm import info_nce, noise_consistency_loss
from priorlab.nn.attention_svm import direction_cosine
from priorlab.nn.nested_dropout import NestedDropout, best_truncation
from priorlab.nn.purifier import purifier_loss, uniform_quantise
from priorlab.nn.sair import text_alignment_loss
from priorlab.nn.stablemax import StableMax, log_stablemax, stablemax, stablemax_cross_entropy
from priorlab.registry import all_cards


def _stablemax_module(x, dim=-1):
    return StableMax(dim=dim)(x)


def _nested_dropout(x, num_features):
    torch.manual_seed(0)
    return NestedDropout(num_features, sigma=2.0)(x)


def _sub_probabilities(g, b, c):
    return 0.9 * probabilities(g, b, c)


TARGETS = [
    Target("attention_log_penalty", attention_log_penalty, lambda g, b, c: dict(
        attention=probabilities(g, b, c))),
    Target("text_alignment_loss", text_alignment_loss, lambda g, b, c: dict(
        embedding=randn(g, b, 6), labels=labels(g, b, c), text_embeddings=randn(g, c, 6))),
    Target("promptsrc_loss", promptsrc_loss, lambda g, b, c: dict(
        logits=randn(g, b, c), labels=labels(g, b, c), text_features=randn(g, c, 4),
        frozen_text_features=randn(g, c, 4), image_features=randn(g, b, 3),
        frozen_image_features=randn(g, b, 3), zero_shot_logits=randn(g, b, c)),
        names=("logits", "features")),
    Target("information_maximisation_loss", information_maximisation_loss, lambda g, b, c: dict(
        probs=probabilities(g, b, c))),
    Target("dispersion_loss", dispersion_loss, lambda g, b, c: dict(probs=probabilities(g, b, c))),
    Target("d2o_loss", d2o_loss, lambda g, b, c: dict(
        policy_sample_logps=-randn(g, b, c).abs(), reference_sample_logps=-randn(g, b, c).abs(),
        policy_negative_logps=-randn(g, b).abs(), reference_negative_logps=-randn(g, b).abs()),
        names=("logps", "log-probabilities", "samples", "negative")),
    Target("prediction_distillation", prediction_distillation, lambda g, b, c: dict(
        student_logits=randn(g, b, c), teacher_logits=randn(g, b, c), temperature=2.0),
        names=("logits",)),
    Target("feature_distillation", feature_distillation, lambda g, b, c: dict(
        student_features=randn(g, b, 4), teacher_features=randn(g, b, 4)), names=("features",)),
    Target("elr_loss", elr_loss, lambda g, b, c: dict(
        logits=randn(g, b, c, scale=3.0), labels=labels(g, b, c),
        target_estimates=_sub_probabilities(g, b, c), lam=3.0), names=("target estimates",)),
    Target("elr_update_targets", elr_update_targets, lambda g, b, c: dict(
        target_estimates=_sub_probabilities(g, b, c), logits=randn(g, b, c), beta=0.7),
        names=("target estimates",)),
    Target("elr_regularizer", elr_regularizer, lambda g, b, c: dict(
        logits=randn(g, b, c), target_estimates=_sub_probabilities(g, b, c)),
        names=("target estimates",)),
    Target("pskd_loss", pskd_loss, lambda g, b, c: dict(
        logits=randn(g, b, c), labels=labels(g, b, c), past_predictions=probabilities(g, b, c),
        alpha=0.5)),
    Target("pskd_targets", pskd_targets, lambda g, b, c: dict(
        labels=labels(g, b, c), past_predictions=probabilities(g, b, c), alpha=0.5)),
    Target("soft_cross_entropy", soft_cross_entropy, lambda g, b, c: dict(
        logits=randn(g, b, c), soft_targets=probabilities(g, b, c)), names=("soft targets",)),
    Target("stablemax", stablemax, lambda g, b, c: dict(x=randn(g, b, c, scale=5.0), dim=-1),
           names=("logits",)),
    Target("log_stablemax", log_stablemax, lambda g, b, c: dict(x=randn(g, b, c), dim=-1),
           names=("logits",)),
    Target("stablemax_cross_entropy", stablemax_cross_entropy, lambda g, b, c: dict(
        logits=randn(g, b, c), targets=labels(g, b, c), reduction="mean")),
    Target("StableMax", _stablemax_module, lambda g, b, c: dict(x=randn(g, b, c), dim=-1),
           names=("logits",)),
    Target("coteaching_loss", coteaching_loss, lambda g, b, c: dict(
        logits1=randn(g, b, c), logits2=randn(g, b, c), targets=labels(g, b, c), forget_rate=0.2),
        names=("logits",)),
    Target("small_loss_indices", small_loss_indices, lambda g, b, c: dict(
        logits=randn(g, b, c), targets=labels(g, b, c), forget_rate=0.2)),
    Target("distillation_loss", distillation_loss, lambda g, b, c: dict(
        student_logits=randn(g, b, c), teacher_logits=randn(g, b, c), tau_s=0.1, tau_t=0.04),
        names=("student logits", "teacher logits")),
    Target("supcon_loss", supcon_loss, lambda g, b, c: dict(
        features=randn(g, b, 4), labels=labels(g, b, c), temperature=0.07)),
    Target("spectral_contrastive_loss", spectral_contrastive_loss, lambda g, b, c: dict(
        z1=randn(g, b, 3), z2=randn(g, b, 3))),
    Target("info_nce", info_nce, lambda g, b, c: dict(query=randn(g, b, 3), key=randn(g, b, 3),
                                                      tau=0.2)),
    Target("noise_consistency_loss", noise_consistency_loss, lambda g, b, c: dict(
        logits=[randn(g, b, c), randn(g, b, c)], lbd=20.0, eta=0.5)),
    Target("purifier_loss", purifier_loss, lambda g, b, c: dict(
        x=torch.rand(b, 6, generator=g), reconstruction=torch.rand(b, 6, generator=g),
        mu=randn(g, b, c), logvar=randn(g, b, c), kl_weight=1.0)),
    Target("uniform_quantise", uniform_quantise, lambda g, b, c: dict(z=randn(g, b, c), step=0.5)),
    Target("backslash_penalty", backslash_penalty, lambda g, b, c: dict(
        params=[randn(g, b, c)], lam=1e-3, nu=[1.5])),
    Target("estimate_gg_shape", estimate_gg_shape, lambda g, b, c: dict(weights=randn(g, b, c))),
    Target("direction_cosine", direction_cosine, lambda g, b, c: dict(a=randn(g, b, c),
                                                                      b=randn(g, b, c))),
    Target("best_truncation", best_truncation, lambda g, b, c: dict(
        truncation_logits=randn(g, 3, b, c), targets=labels(g, b, c))),
    Target("grpo_loss", grpo_loss, lambda g, b, c: dict(
        logprobs=-randn(g, b, c).abs(), old_logprobs=-randn(g, b, c).abs(), advantages=randn(g, b)),
        names=("logprobs", "advantages")),
    Target("semantic_alignment_loss", semantic_alignment_loss, lambda g, b, c: dict(
        projected=randn(g, b, c, 2, 2), teacher=randn(g, b, c, 2, 2))),
    Target("codebook_entropy_loss", codebook_entropy_loss, lambda g, b, c: dict(
        distances=randn(g, b, c).abs(), temperature=0.5)),
    Target("closed_form_edit", closed_form_edit, lambda g, b, c: dict(
        weight=randn(g, c, 4), contexts=randn(g, b, 4), targets=randn(g, b, c), lam=0.1)),
    Target("energy_margin_loss", energy_margin_loss, lambda g, b, c: dict(
        id_logits=randn(g, b, c), ood_logits=randn(g, b, c)), names=("logits",)),
    Target("context_embedding_loss", context_embedding_loss, lambda g, b, c: dict(
        states=randn(g, b, 3, c), reference_states=randn(g, b, 3, c),
        context_mask=torch.ones(b, 3, dtype=torch.bool)), names=("states", "mask")),
    Target("winning_mask", winning_mask, lambda g, b, c: dict(scores=randn(g, b, c), capacity=0.5),
           names=("scores",)),
    Target("NestedDropout", _nested_dropout, lambda g, b, c: dict(x=randn(g, b, c),
                                                                  num_features=c),
           names=("input", "feature", "features")),
]
TARGETS += round3.TARGETS + round4.TARGETS
BY_NAME = {t.name: t for t in TARGETS}

# What the fuzzer found in modules outside this suite's owner's files (issue 16), reported for
# their owners; remove an entry when its finding is fixed (XPASS in the report). Not strict:
# the CI profile's few fixed examples do not reach every finding (the long profile does).
FINDINGS: dict[str, str] = {**round3.FINDINGS, **round4.FINDINGS}
# valid finite logits whose gradient comes back NaN
GRADIENT_FINDINGS: dict[str, str] = {**round3.FINDINGS, **round4.FINDINGS}


def _with_findings(targets, findings):
    return [pytest.param(t, id=t.name, marks=pytest.mark.xfail(strict=False, reason=findings[t.name]))
            if t.name in findings else pytest.param(t, id=t.name) for t in targets]

# card id -> the targets that exercise its component (or its functional core)
TARGETS_BY_CARD = {
    "elr": ("elr_loss", "elr_update_targets", "elr_regularizer"),
    "pskd": ("pskd_loss", "pskd_targets", "soft_cross_entropy"),
    "stablemax": ("stablemax", "log_stablemax", "stablemax_cross_entropy", "StableMax"),
    "nested-coteaching": ("coteaching_loss", "small_loss_indices"),
    "nested-dropout": ("NestedDropout", "best_truncation"),
    "random-teacher": ("distillation_loss",),
    "projection-head": ("supcon_loss", "spectral_contrastive_loss"),
    "rrcm": ("info_nce", "noise_consistency_loss"),
    "quantised-purifier": ("purifier_loss", "uniform_quantise"),
    "backslash": ("backslash_penalty", "estimate_gg_shape"),
    "att-svm": ("direction_cosine",),
    "sparse-vit": ("attention_log_penalty",),
    "sair": ("text_alignment_loss",),
    "promptsrc": ("promptsrc_loss",),
    "rehearsal-free": ("prediction_distillation", "feature_distillation"),
    "d2o": ("d2o_loss",),
    "sfda2": ("information_maximisation_loss", "dispersion_loss"),
    "pfnr": ("winning_mask",),
    "rft": ("grpo_loss",),
    "gigatok": ("semantic_alignment_loss", "codebook_entropy_loss"),
    "time": ("closed_form_edit",),
    "ovor": ("energy_margin_loss",),
    "core": ("context_embedding_loss",),
}
TARGETS_BY_CARD.update({**round3.TARGETS_BY_CARD, **round4.TARGETS_BY_CARD})
# cards whose component is not a tensor-in, tensor-out function, with the reason
EXCUSED = {
    "lion": "optimizer: fuzzed in test_fuzz_optim.py",
    "perpgrad": "optimizer: fuzzed in test_fuzz_optim.py",
    "nsfp": "scene flow: fuzzed in tests/sceneflow/test_fuzz_sceneflow.py",
    "scaling-regime": "a whole language-model training run from a corpus, not a tensor function",
    "token-crisis-repetition": "builds a data schedule from a token stream; covered by test_lm",
    "icl-regression": "a model class; its inputs are generated by its own data module",
    "stability-bound": "diagnostics over a model and a loss; no tensor inputs of its own",
    "weight-compander": "a parametrisation applied to a module, not a tensor function",
    "trace-monitor": "a training-loop adapter measuring a model; no tensor inputs of its own",
    "predictive-alignment": "eigen-analysis of an exact Markov source built by its data module",
    "gg-init": "an initialiser filling a tensor in place (its argument is shape only)",
    "t-jepa": "a model with its own tokenizer; bad input covered in tests/test_tjepa.py",
    "superinpaint": "a trained image-completion network; bad input in tests/test_superinpaint.py",
    "i-medsam": "adapters on a frozen encoder + a segmentation field; bad input in tests/test_imedsam.py",
    "naisr": "an SDF network trained on shape samples; bad input in tests/test_naisr.py",
    "arbitrary-scale-ldm": "autoencoder + implicit decoder + latent denoiser; bad input in its test file",
    "fast-sae": "an SAE trained on collected activations; bad input in tests/test_fast_sae.py",
    "sara": "a parametrisation applied to a model's weights; bad input in tests/test_sara.py",
    "adapt-unlearn": "a two-stage GAN training; penalties take parameter dicts (test_adapt_unlearn.py)",
    "ramt": "binary masks parametrising a model's weights; bad input in tests/test_ramt.py",
    "hyperzzw-terminator": "a whole classifier network; bad input in tests/test_hyperzzw.py",
    "glad": "a gradient rewrite needing a loss closure and a model; bad input in tests/test_glad.py",
    "gifd": "an optimisation-based attack on shared gradients; bad input in tests/test_gifd.py",
    "hft": "freezes half of a model's matrices (no tensor inputs); bad input in tests/test_hft.py",
    "smooth-diffusion": "a penalty on a UNet's Jacobian (needs the model); bad input in its test file",
    "profusion": "a prompt encoder and a sampler over a UNet; bad input in tests/test_profusion.py",
    "neti": "a mapper and attention processors on a UNet; bad input in tests/test_neti.py",
    "neumeta": "a hypernetwork emitting a network's weights per width; bad input in tests/test_neumeta.py",
}


def test_every_card_is_fuzzed_or_excused():
    ids = {card.id for card in all_cards()}
    unaccounted = ids - set(TARGETS_BY_CARD) - set(EXCUSED)
    assert not unaccounted, f"add these cards to TARGETS_BY_CARD or EXCUSED: {sorted(unaccounted)}"
    assert not (set(TARGETS_BY_CARD) | set(EXCUSED)) - ids, "stale card ids in the fuzz tables"
    assert all(name in BY_NAME for names in TARGETS_BY_CARD.values() for name in names)


@st.composite
def fuzzed_call(draw, target: Target):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    batch = draw(st.sampled_from((0, 1, 2, 3, 7)))
    classes = draw(st.integers(1, 5))
    kwargs = target.build(gen, batch, classes)
    if draw(st.integers(0, 4)):  # four in five examples change one argument
        name = draw(st.sampled_from(sorted(kwargs)))
        kwargs[name] = mutate_argument(draw, kwargs[name])
    return kwargs


@pytest.mark.parametrize("target", _with_findings(TARGETS, FINDINGS))
def test_bad_input_gives_a_clear_error_or_a_finite_result(target):
    @given(fuzzed_call(target))
    def run(kwargs):
        check_outcome(target, kwargs)

    run()


@pytest.mark.parametrize("target", _with_findings(
    [t for t in TARGETS if "logits" in inspect.signature(t.fn).parameters], GRADIENT_FINDINGS))
@given(scale=st.sampled_from((1.0, 1e4, 1e8)), seed=st.integers(0, 2**16))
def test_valid_but_large_logits_give_finite_gradients(target, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    kwargs = target.build(gen, 4, 3)
    logits = kwargs["logits"]
    leaves = [(t * scale).requires_grad_(True) for t in (logits if isinstance(logits, list) else [logits])]
    kwargs["logits"] = leaves if isinstance(logits, list) else leaves[0]
    result = check_outcome(target, kwargs)
    if isinstance(result, torch.Tensor) and result.requires_grad and result.numel() == 1:
        result.backward()
        for leaf in leaves:
            assert leaf.grad is None or torch.isfinite(leaf.grad).all(), \
                f"{target.name}: non-finite gradient at logit scale {scale:g}"


def test_cross_entropy_baseline_is_fuzzable():
    # the property itself: torch's own loss on NaN logits returns NaN silently, which the
    # fuzzer must flag (so a passing target above is evidence, not a blind spot)
    target = Target("cross_entropy", F.cross_entropy, lambda g, b, c: {})
    with pytest.raises(AssertionError, match="non-finite"):
        check_outcome(target, {"input": torch.tensor([[float("nan"), 0.0]]),
                               "target": torch.tensor([0])})
