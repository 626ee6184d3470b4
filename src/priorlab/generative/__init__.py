"""Small generative models trained here (a DCGAN for digits) and the classifier-based scores
used to judge them (class rates, a Fréchet distance over a digits classifier's features)."""

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

__all__ = [
    "DigitClassifier",
    "Discriminator",
    "Generator",
    "adversarial_training",
    "class_rates",
    "classifier_frechet_distance",
    "digit_images",
    "frechet_distance",
    "image_grid",
    "pretrained_classifier",
    "pretrained_gan",
]
