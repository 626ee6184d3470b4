"""Small generative models trained here (a DCGAN for digits, a VQ tokenizer with an
autoregressive token generator, a tiny text-to-image diffusion model in ``diffusion``) and the
classifier-based scores used to judge them (class rates, a Fréchet distance over a digits
classifier's features)."""

from priorlab.generative.autoregressive import TokenTransformer, tokenizer_pipeline
from priorlab.generative.evaluate import (
    DigitClassifier,
    class_rates,
    classifier_frechet_distance,
    frechet_distance,
    image_grid,
    pretrained_classifier,
)
from priorlab.generative.gan import (
    Discriminator,
    Generator,
    adversarial_training,
    digit_images,
    pretrained_gan,
)
from priorlab.generative.tokenizer import VQTokenizer, pretrained_tokenizer

__all__ = [
    "DigitClassifier",
    "Discriminator",
    "Generator",
    "TokenTransformer",
    "VQTokenizer",
    "adversarial_training",
    "class_rates",
    "classifier_frechet_distance",
    "digit_images",
    "frechet_distance",
    "image_grid",
    "pretrained_classifier",
    "pretrained_gan",
    "pretrained_tokenizer",
    "tokenizer_pipeline",
]
