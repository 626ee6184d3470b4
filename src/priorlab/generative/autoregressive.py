"""A small class-conditional autoregressive transformer over a tokenizer's 16 tokens, and the
scores of the tokenizer -> generator pipeline (papers 15 GigaTok and 50 RobustTok).

:class:`TokenTransformer` is a GPT-style causal decoder (as LlamaGen's class-conditional AR
model, Sun et al., arXiv 2406.06525, in miniature): the class embedding is the first input
position, tokens follow in raster order, position ``t`` predicts token ``t``. Sampling draws
each token from the softmax at ``temperature`` (no top-k, no classifier-free guidance).

:func:`pipeline_scores` judges a tokenizer and its generator with the digits classifier of
:mod:`priorlab.generative.evaluate`: reconstruction PSNR on held-out digits, the classifier
Fréchet distance of generated digits to real ones (FID-like, not Inception FID), the share of
samples classified as their conditioning class, and RobustTok's perturbed reconstruction score
(pFID: the Fréchet distance of reconstructions decoded from token grids with sampling-error-like
perturbations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.fields import psnr
from priorlab.functional.tokenizer_regularisers import perturb_tokens
from priorlab.generative.evaluate import classifier_frechet_distance, pretrained_classifier
from priorlab.generative.gan import digit_images
from priorlab.generative.tokenizer import VQTokenizer, pretrained_tokenizer
from priorlab.validation import check_number, check_tensor


class TokenTransformer(nn.Module):
    """Causal transformer: ``forward(tokens (N, L), labels (N,)) -> logits (N, L, vocab)``."""

    def __init__(self, vocab_size: int, num_classes: int = 10, length: int = 16, dim: int = 64,
                 depth: int = 2, heads: int = 4):
        super().__init__()
        who = "TokenTransformer"
        self.vocab_size = check_number(vocab_size, "vocab_size", who=who, low=2, integer=True)
        self.num_classes = check_number(num_classes, "num_classes", who=who, low=1, integer=True)
        self.length = check_number(length, "length", who=who, low=1, integer=True)
        dim = check_number(dim, "dim", who=who, low=1, integer=True)
        if dim % heads:
            raise PriorlabError(f"{who}: dim ({dim}) must be divisible by heads ({heads})")
        self.class_embedding = nn.Embedding(self.num_classes, dim)
        self.token_embedding = nn.Embedding(self.vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(self.length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.vocab_size)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_tensor(tokens, "tokens", who="TokenTransformer", ndim=2, dtype="integer")
        check_tensor(labels, "labels", who="TokenTransformer", shape=(len(tokens),), dtype="integer")
        if tokens.shape[1] > self.length:
            raise PriorlabError(f"TokenTransformer: at most {self.length} tokens, got {tokens.shape[1]}")
        # inputs: class, t_0, ..., t_{L-2}; output t predicts token t
        inputs = torch.cat([self.class_embedding(labels)[:, None],
                            self.token_embedding(tokens[:, :-1])], dim=1)
        steps = inputs.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(steps)
        hidden = self.blocks(inputs + self.position[:steps], mask=mask, is_causal=True)
        return self.head(self.norm(hidden))

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, *, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, length) token ids drawn one position at a time for the given class labels."""
        temperature = check_number(temperature, "temperature", who="TokenTransformer.sample", low=0.0,
                                   low_open=True)
        tokens = torch.zeros(len(labels), 0, dtype=torch.long)
        for t in range(self.length):
            # forward drops the last input token, so a placeholder stands in for position t
            padded = torch.cat([tokens, torch.zeros(len(labels), 1, dtype=torch.long)], dim=1)
            logits = self(padded, labels)[:, t] / temperature
            tokens = torch.cat([tokens, torch.multinomial(F.softmax(logits, dim=1), 1,
                                                          generator=generator)], dim=1)
        return tokens


def train_generator(model: TokenTransformer, tokens: torch.Tensor, labels: torch.Tensor, *, steps: int,
                    batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """AdamW (cosine-decayed lr, weight decay 0.05) on next-token cross-entropy; returns losses."""
    check_tensor(tokens, "tokens", who="train_generator", ndim=2, dtype="integer", non_empty=True)
    check_tensor(labels, "labels", who="train_generator", shape=(len(tokens),), dtype="integer")
    steps = check_number(steps, "steps", who="train_generator", low=1, integer=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(tokens), (batch_size,), generator=rng)
        logits = model(tokens[idx], labels[idx])
        loss = F.cross_entropy(logits.reshape(-1, model.vocab_size), tokens[idx].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def perturbed_frechet(tokenizer: VQTokenizer, classifier, images: torch.Tensor, *, rate: float,
                      delta: int, seed: int = 0) -> float:
    """RobustTok's pFID stand-in: tokenize ``images``, perturb each token with probability
    ``rate`` to one of its ``delta`` nearest codes, decode, and take the classifier Fréchet
    distance of the decoded images to ``images``."""
    tokens = perturb_tokens(tokenizer.tokenize(images), tokenizer.codes(), rate=rate, delta=delta,
                            generator=torch.Generator().manual_seed(seed))
    return classifier_frechet_distance(classifier, tokenizer.decode(tokens), images)


def pipeline_scores(tokenizer: VQTokenizer, generator_model: TokenTransformer, classifier,
                    real: tuple[torch.Tensor, torch.Tensor], *, samples_per_class: int = 50,
                    temperature: float = 1.0, perturb_rate: float = 0.0, perturb_delta: int = 1,
                    seed: int = 0) -> tuple[dict[str, float], torch.Tensor]:
    """Scores of the pipeline against held-out ``real`` (images, labels), and the samples.

    Metrics: ``recon_psnr`` (dB) and ``recon_fd`` (reconstruction Fréchet, rFID-like),
    ``gen_fd`` (generation Fréchet, gFID-like), ``gen_class_acc`` (share of samples classified as
    their class), ``code_usage`` (share of codes used on ``real``), and ``pfid`` when
    ``perturb_rate > 0``.
    """
    images, labels = real
    generator_model.eval()
    with torch.no_grad():
        tokens = tokenizer.tokenize(images)
        recon = tokenizer.decode(tokens)
        wanted = torch.arange(generator_model.num_classes).repeat_interleave(samples_per_class)
        sampled = generator_model.sample(wanted, temperature=temperature,
                                         generator=torch.Generator().manual_seed(seed))
        generated = tokenizer.decode(sampled)
        class_acc = float((classifier(generated).argmax(1) == wanted).float().mean())
    scores = {"recon_psnr": psnr(recon, images),
              "recon_fd": classifier_frechet_distance(classifier, recon, images),
              "gen_fd": classifier_frechet_distance(classifier, generated, images),
              "gen_class_acc": class_acc,
              "code_usage": len(tokens.unique()) / tokenizer.codebook_size}
    if perturb_rate > 0:
        scores["pfid"] = perturbed_frechet(tokenizer, classifier, images, rate=perturb_rate,
                                           delta=perturb_delta, seed=seed)
    return scores, generated


def tokenizer_pipeline(cfg: dict, seed: int, *, size: str | int, semantic_weight: float = 0.0,
                       perturbation: dict | None = None) -> tuple[dict[str, float], torch.Tensor, dict]:
    """Train (or load) a tokenizer, train the AR generator on its training-set tokens, and score
    both on the test digits: ``(scores, generated images, info)``.

    ``cfg`` keys: tokenizer_steps, tokenizer_lr, codebook_size, code_dim, ar_steps, ar_dim,
    ar_depth, samples_per_class, temperature, perturb_rate, perturb_delta, classifier_epochs.
    """
    tokenizer, tok_info = pretrained_tokenizer(
        size=size, codebook_size=cfg["codebook_size"], code_dim=cfg["code_dim"],
        steps=cfg["tokenizer_steps"], lr=cfg["tokenizer_lr"], semantic_weight=semantic_weight,
        perturbation=perturbation, teacher_epochs=cfg["classifier_epochs"], seed=seed)
    judge, _ = pretrained_classifier(dataset="digits", image_size=16, epochs=cfg["classifier_epochs"])
    train_x, train_y = digit_images(16, "train")
    torch.manual_seed(seed)
    model = TokenTransformer(tokenizer.codebook_size, dim=cfg["ar_dim"], depth=cfg["ar_depth"])
    losses = train_generator(model, tokenizer.tokenize(train_x), train_y, steps=cfg["ar_steps"], seed=seed)
    scores, generated = pipeline_scores(
        tokenizer, model, judge.eval(), digit_images(16, "test"),
        samples_per_class=cfg["samples_per_class"], temperature=cfg["temperature"],
        perturb_rate=cfg["perturb_rate"], perturb_delta=cfg["perturb_delta"], seed=seed)
    tail = max(1, len(losses) // 10)
    info = {"tokenizer_seconds": tok_info["train_seconds"], "tokenizer_width": tok_info["width"],
            "tokenizer_final": {k: v for k, v in tok_info.items() if k.startswith("final_")},
            "ar_final_loss": sum(losses[-tail:]) / tail}
    return scores, generated, info
