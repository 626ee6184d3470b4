"""A small CLIP stand-in: a ViT image encoder trained here against the frozen MiniLM text encoder.

No CLIP weights exist offline here. The stand-in keeps what the CLIP prompt-learning papers rely
on: an image encoder and a text encoder whose unit features meet in one space, zero-shot
classification by ``argmax_k cos(f(x), g("a photo of a {name_k}."))`` scaled by a learned
temperature, and text- and image-side places to insert learnable prompts. The text encoder is
MiniLM (:mod:`priorlab.vl.text`), frozen; the image encoder (:class:`PromptableViT`) is trained
once per seed with the CLIP loss (Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision", ICML 2021, arXiv:2103.00020, Fig. 3: symmetric cross-entropy over
cosine similarities times a learnable ``exp(t)``, t initialised at log(1/0.07), clipped at 100)
on Fashion-MNIST images paired with class-name captions from several templates. Since the
captions of a batch repeat (one per class and template), the image-to-text term is a
cross-entropy over the batch's distinct captions and the text-to-image term spreads its target
uniformly over the images of the caption's class.

"Pre-training" covers the classes named by the caller; the base-to-novel protocol
(:func:`base_novel_split`, :func:`harmonic_mean`, CoCoOp's, Zhou et al. CVPR 2022,
arXiv:2203.05557) then tunes prompts on few shots of the base half and tests on both halves.
:func:`tiny_clip` builds a seeded tiny ``transformers`` CLIPModel for tests of components that
target real CLIP; :func:`clip_text_features_with_context` is CoOp's learnable-context path through
a real CLIPModel's text tower.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.nn.attention_vit import EncoderBlock
from priorlab.seed import seed_everything
from priorlab.validation import check_number, check_tensor
from priorlab.vl.text import TEXT_DIM, context_init, embed_texts, encode_with_context

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle boot")
ZERO_SHOT_TEMPLATE = "a photo of a {}."
# caption styles for pre-training and PromptSRC's frozen-text ensemble (ImageNet-template-like)
TEMPLATES = ("a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
             "a photo of the {}.", "a grayscale picture of a {}.", "a cropped photo of a {}.",
             "an image of a {}.", "a small photo of the {}.")
MAX_LOGIT_SCALE = 100.0  # CLIP clips exp(t) at 100


class PromptableViT(nn.Module):
    """ViT image encoder returning unit features (B, ``embed_dim``) from the class token.

    ``forward(x, prompts)``: optional shallow visual prompts (P, dim), learnable tokens inserted
    after the class token once positions are added (VPT-shallow, Jia et al. ECCV 2022,
    arXiv:2203.12119; IVLP/PromptSRC insert them in the first layers). Blocks are the pre-norm
    blocks of :mod:`priorlab.nn.attention_vit`.
    """

    def __init__(self, embed_dim: int = TEXT_DIM, *, image_size: int = 28, patch_size: int = 7,
                 channels: int = 1, dim: int = 64, depth: int = 3, heads: int = 4, mlp_dim: int = 128):
        super().__init__()
        who = "PromptableViT"
        embed_dim = check_number(embed_dim, "embed_dim", who=who, low=1, integer=True)
        self.image_size = check_number(image_size, "image_size", who=who, low=1, integer=True)
        self.patch_size = check_number(patch_size, "patch_size", who=who, low=1, integer=True)
        self.channels = check_number(channels, "channels", who=who, low=1, integer=True)
        self.dim = check_number(dim, "dim", who=who, low=1, integer=True)
        depth = check_number(depth, "depth", who=who, low=1, integer=True)
        if image_size % patch_size:
            raise PriorlabError(f"{who}: image_size ({image_size}) must be a multiple of "
                                f"patch_size ({patch_size})")
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(channels * patch_size ** 2, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_patches + 1, dim))
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.project = nn.Linear(dim, embed_dim, bias=False)

    def forward(self, x: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        who = "PromptableViT"
        check_tensor(x, "x", who=who, dtype="float",
                     shape=(None, self.channels, self.image_size, self.image_size))
        b, c, p = x.shape[0], self.channels, self.patch_size
        g = self.image_size // p
        patches = x.view(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
        tokens = self.patch_embed(patches)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self.pos_embed
        if prompts is not None:
            check_tensor(prompts, "prompts", who=who, shape=(None, self.dim), dtype="float", finite=True)
            tokens = torch.cat([tokens[:, :1], prompts.unsqueeze(0).expand(b, -1, -1), tokens[:, 1:]], 1)
        for block in self.blocks:
            tokens, _ = block(tokens)
        return F.normalize(self.project(self.norm(tokens)[:, 0]), dim=-1)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss for images (B, D) against the captions of K classes (K, D).

    ``labels`` (B,) index each image's caption; ``logit_scale`` is the log of the inverse
    temperature. Image-to-text: cross-entropy over the K captions; text-to-image: for each class
    present in the batch, cross-entropy over the images with the target spread evenly over that
    class's images. Features are normalised here.
    """
    who = "clip_loss"
    check_tensor(image_features, "image_features", who=who, ndim=2, dtype="float", finite=True,
                 non_empty=True)
    check_tensor(text_features, "text_features", who=who, shape=(None, image_features.shape[1]),
                 dtype="float", finite=True, non_empty=True)
    check_tensor(labels, "labels", who=who, shape=(image_features.shape[0],), dtype="integer")
    if labels.min() < 0 or labels.max() >= text_features.shape[0]:
        raise PriorlabError(f"{who}: labels must lie in [0, {text_features.shape[0]})")
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    present = labels.unique()
    targets = (labels.unsqueeze(0) == present.unsqueeze(1)).to(logits.dtype)
    text_to_image = -(targets / targets.sum(1, keepdim=True) * logits[:, present].T.log_softmax(1)).sum(1)
    return (F.cross_entropy(logits, labels) + text_to_image.mean()) / 2


def class_prompts(class_names: Sequence[str], template: str = ZERO_SHOT_TEMPLATE) -> list[str]:
    """``template`` filled with each class name."""
    return [template.format(name) for name in class_names]


class StandIn(nn.Module):
    """The frozen stand-in: ``image_encoder`` and ``logit_scale`` (log inverse temperature).

    ``text_features(names)`` embeds the zero-shot prompts; ``logits(x, text_features)`` are
    ``exp(logit_scale) * cos``.
    """

    def __init__(self, image_encoder: PromptableViT, logit_scale: float = math.log(1 / 0.07)):
        super().__init__()
        self.image_encoder = image_encoder
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def text_features(self, class_names: Sequence[str], template: str = ZERO_SHOT_TEMPLATE) -> torch.Tensor:
        return embed_texts(class_prompts(class_names, template))

    def logits(self, images: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.image_encoder(images) @ F.normalize(text_features, dim=-1).T


class PromptedStandIn(nn.Module):
    """A frozen :class:`StandIn` with learnable prompts on both sides (IVLP-style, shallow).

    Text: ``n_text_context`` context vectors in MiniLM's word-embedding space shared by all
    classes, initialised from the word pieces of ``context_words`` (CoOp/PromptSRC's "a photo of
    a") or, with ``context_words=None``, from N(0, 0.02^2). Image: ``n_visual_prompts`` tokens of
    the ViT's width, N(0, 0.02^2) (0 = text prompts only, CoOp). Only the prompts train.
    ``forward(images, class_names) -> (logits, text_features, image_features)``.
    """

    def __init__(self, standin: StandIn, *, n_text_context: int = 4,
                 context_words: str | None = "a photo of a", n_visual_prompts: int = 0):
        super().__init__()
        who = "PromptedStandIn"
        n_text_context = check_number(n_text_context, "n_text_context", who=who, low=1, integer=True)
        n_visual_prompts = check_number(n_visual_prompts, "n_visual_prompts", who=who, low=0, integer=True)
        self.standin = standin.requires_grad_(False)
        if context_words is None:
            context = 0.02 * torch.randn(n_text_context, TEXT_DIM)
        else:
            context = context_init(context_words)
            if len(context) != n_text_context:
                raise PriorlabError(f"{who}: {context_words!r} has {len(context)} word pieces, not "
                                    f"n_text_context={n_text_context}")
        self.text_context = nn.Parameter(context)
        dim = standin.image_encoder.dim
        self.visual_prompts = nn.Parameter(0.02 * torch.randn(n_visual_prompts, dim)) \
            if n_visual_prompts else None

    def text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        return encode_with_context(self.text_context, class_names)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.standin.image_encoder(images, self.visual_prompts)

    def forward(self, images: torch.Tensor,
                class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        text, image = self.text_features(class_names), self.image_features(images)
        return self.standin.scale * image @ text.T, text, image


def pretrain(x: torch.Tensor, y: torch.Tensor, class_names: Sequence[str], seed: int, *,
             epochs: int = 4, batch_size: int = 256, lr: float = 2e-3, weight_decay: float = 0.05,
             templates: Sequence[str] = TEMPLATES, **vit_kwargs) -> StandIn:
    """Train a :class:`StandIn`'s image encoder and temperature with :func:`clip_loss` on images
    ``x`` (N, C, H, W) labelled ``y`` in ``[0, len(class_names))``, each batch captioned with one
    template drawn at random. AdamW with a cosine schedule; returns the model in eval mode,
    frozen."""
    who = "pretrain"
    check_tensor(x, "x", who=who, ndim=4, dtype="float", finite=True, non_empty=True)
    check_tensor(y, "y", who=who, shape=(x.shape[0],), dtype="integer")
    if y.min() < 0 or y.max() >= len(class_names):
        raise PriorlabError(f"{who}: labels must lie in [0, {len(class_names)}) (one per class name)")
    epochs = check_number(epochs, "epochs", who=who, low=1, integer=True)
    generator = seed_everything(seed)
    captions = torch.stack([embed_texts(class_prompts(class_names, t)) for t in templates])
    model = StandIn(PromptableViT(captions.shape[-1], image_size=x.shape[-1], channels=x.shape[1],
                                  **vit_kwargs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(y) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            template = int(torch.randint(len(templates), (1,), generator=generator))
            loss = clip_loss(model.image_encoder(x[idx]), captions[template], y[idx], model.logit_scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval().requires_grad_(False)


def cache_dir() -> Path:
    """``$PRIORLAB_CACHE/vl_standin`` (default ``~/.cache/priorlab/vl_standin``)."""
    return Path(os.environ.get("PRIORLAB_CACHE", Path.home() / ".cache" / "priorlab")) / "vl_standin"


def cached_pretrain(x: torch.Tensor, y: torch.Tensor, class_names: Sequence[str], seed: int,
                    **kwargs) -> StandIn:
    """:func:`pretrain`, stored once per (data, class names, settings, seed) under
    :func:`cache_dir` (written atomically) and loaded from there afterwards."""
    digest = hashlib.sha256()
    digest.update(x.numpy().tobytes())
    digest.update(y.numpy().tobytes())
    digest.update(json.dumps([list(class_names), seed, sorted(kwargs.items(), key=str)],
                             default=str).encode())
    path = cache_dir() / f"standin_{digest.hexdigest()[:16]}.pt"
    vit_keys = ("dim", "depth", "heads", "mlp_dim", "patch_size")
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = StandIn(PromptableViT(TEXT_DIM, image_size=x.shape[-1], channels=x.shape[1],
                                      **{k: v for k, v in kwargs.items() if k in vit_keys}))
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)
    model = pretrain(x, y, class_names, seed, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
    return model


@torch.no_grad()
def zero_shot_accuracy(model: StandIn, images: torch.Tensor, labels: torch.Tensor,
                       text_features: torch.Tensor) -> float:
    """Share of ``images`` whose closest class feature (cosine) is the label's."""
    check_tensor(labels, "labels", who="zero_shot_accuracy", shape=(images.shape[0],), dtype="integer")
    return (model.logits(images, text_features).argmax(1) == labels).float().mean().item()


def base_novel_split(num_classes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """CoCoOp's split: base = the first ``ceil(num_classes / 2)`` classes, novel = the rest."""
    num_classes = check_number(num_classes, "num_classes", who="base_novel_split", low=2, integer=True)
    half = math.ceil(num_classes / 2)
    return tuple(range(half)), tuple(range(half, num_classes))


def harmonic_mean(base: float, novel: float) -> float:
    """``2 b n / (b + n)``, the base-to-novel summary (0 when both are 0)."""
    base = check_number(base, "base", who="harmonic_mean", low=0.0)
    novel = check_number(novel, "novel", who="harmonic_mean", low=0.0)
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def tiny_clip(seed: int = 0, *, hidden: int = 32, projection_dim: int = 16, layers: int = 2,
              image_size: int = 16, patch_size: int = 8, vocab_size: int = 99):
    """A seeded, randomly initialised ``transformers.CLIPModel`` small enough for unit tests of
    components that target real CLIP (``get_text_features``, ``get_image_features``,
    ``text_model.embeddings.token_embedding``)."""
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError:
        raise PriorlabError("tiny_clip needs transformers: pip install transformers") from None
    common = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
              "num_attention_heads": 2, "projection_dim": projection_dim}
    config = CLIPConfig(text_config={**common, "vocab_size": vocab_size, "max_position_embeddings": 32,
                                     "bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1,
                                     "pad_token_id": 1},
                        vision_config={**common, "image_size": image_size, "patch_size": patch_size,
                                       "num_channels": 3},
                        projection_dim=projection_dim)
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def clip_text_features_with_context(clip, input_ids: torch.Tensor,
                                    context_vectors: torch.Tensor) -> torch.Tensor:
    """CoOp's prompt path through a real ``transformers`` CLIPModel: projected text features
    (K, projection_dim) of ``[SOS] v_1..v_M <tokens of input_ids after SOS>``.

    ``input_ids`` (K, L) tokenised class prompts starting with SOS and containing EOS (as CLIP's
    tokenizer makes them); ``context_vectors`` (M, width) shared or (K, M, width) per class. The
    context goes into the token embeddings, position embeddings are added for the longer
    sequence (at most ``max_position_embeddings``), and the features are read at the EOS token
    as :class:`transformers.CLIPTextModel` does, then projected by ``text_projection``.
    """
    who = "clip_text_features_with_context"
    from transformers.masking_utils import create_causal_mask
    text = clip.text_model
    check_tensor(input_ids, "input_ids", who=who, ndim=2, dtype="integer", non_empty=True)
    width = text.embeddings.token_embedding.embedding_dim
    check_tensor(context_vectors, "context_vectors", who=who, ndim=(2, 3), dtype="float", finite=True)
    if context_vectors.shape[-1] != width or (context_vectors.ndim == 3
                                              and context_vectors.shape[0] != input_ids.shape[0]):
        raise PriorlabError(f"{who}: context must be (M, {width}) or ({input_ids.shape[0]}, M, {width}), "
                            f"got {tuple(context_vectors.shape)}")
    count, length = input_ids.shape
    n_context = context_vectors.shape[-2]
    if length + n_context > text.config.max_position_embeddings:
        raise PriorlabError(f"{who}: {length} tokens + {n_context} context vectors exceed the "
                            f"{text.config.max_position_embeddings} positions of this CLIP")
    tokens = text.embeddings.token_embedding(input_ids)
    context = context_vectors if context_vectors.ndim == 3 else context_vectors.expand(count, -1, -1)
    hidden = text.embeddings(inputs_embeds=torch.cat([tokens[:, :1], context.to(tokens.dtype),
                                                      tokens[:, 1:]], 1))
    mask = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    hidden = text.final_layer_norm(text.encoder(inputs_embeds=hidden, attention_mask=mask,
                                                is_causal=True).last_hidden_state)
    if text.eos_token_id == 2:  # legacy configs: EOS is the largest id (transformers' own rule)
        eos = input_ids.argmax(-1)
    else:
        eos = (input_ids == text.eos_token_id).int().argmax(-1)
    return clip.text_projection(hidden[torch.arange(count), eos + n_context])
