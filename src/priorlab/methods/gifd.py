"""Paper card: GIFD, generative gradient inversion in the feature domain (seed 52).

Components: :mod:`priorlab.generative.inversion` — :func:`invert_features` (GIFD), the baselines
:func:`invert_pixels` (DLG/IG) and :func:`invert_latent` (GI), and the client side with its
defences (:func:`shared_gradients`, :func:`defend_gradients`). An attack, not trainable: no
``Example`` for the training-loop contracts.
"""

from __future__ import annotations

from priorlab.generative.inversion import invert_features
from priorlab.registry import MethodCard, Paper, register

PAPER = Paper(
    title="GIFD: A Generative Gradient Inversion Method with Feature Domain Optimization",
    authors="Hao Fang, Bin Chen, Xuan Wang, Zhi Wang, Shu-Tao Xia",
    venue="ICCV",
    year=2023,
    arxiv="2308.04699",
    code_url="https://github.com/ffhibnese/GIFD_Gradient_Inversion_Attack",
    licence="MIT",
    seed_id=52,
)

USAGE = """\
import torch
from priorlab.generative import Generator
from priorlab.generative.inversion import invert_features, shared_gradients
from priorlab.models import SmallCNN

torch.manual_seed(0)
client = SmallCNN(10, channels=4, image_size=16).eval()
private, labels = torch.rand(2, 1, 16, 16), torch.tensor([3, 7])
# what the client shares; prune_ratio / noise_std are the defences to audit
shared = shared_gradients(client, private, labels, prune_ratio=0.0, noise_std=0.0)
generator = Generator(latent_dim=8, channels=4, image_size=16)  # in practice: a pretrained GAN
result = invert_features(client, shared, labels, generator, latent_steps=5, layer_steps=3,
                         radii=(0.5, 1.0, 1.5))
print(result.stage, result.loss, result.images.shape)  # best stage, its matching loss, (2,1,16,16)
"""

CARD = register(MethodCard(
    id="gifd",
    name="GIFD (Generative gradient Inversion in the Feature Domain)",
    family="G: generative models, editing and attacks",
    kind="system",
    paper=PAPER,
    summary=("A gradient inversion attack for auditing the privacy of federated gradients: it "
             "searches a pretrained generator's latent for images whose classifier gradient "
             "matches the shared one (1 - cosine), then optimises the generator's intermediate "
             "features block by block, each within an l1 ball around its starting value, and "
             "returns the stage output with the lowest matching loss. Use it to measure how much "
             "a client's gradient (and a defence: pruning, noise) leaks; the same module ships "
             "the pixel-space (DLG/IG) and latent-only (GI) attacks it is compared with."),
    usage=USAGE,
    hyperparameters=(
        "Official (BigGAN config): Adam lr 0.1 per stage with x0.1 decay at 3/8, 5/8, 7/8; "
        "1,000 steps for the latent and for each feature stage; cost 1 - cosine over all "
        "gradients; TV 1e-4; 4 restarts; l1 radii r_k = r_1 + (k - 1) dr (2,000 + 500 (k - 1) "
        "for BigGAN features). Here: latent_steps, layer_steps (int or one per stage), radii "
        "(one per intermediate feature, relative to each image's initial feature l1 norm; "
        "default 0.5/1.0/1.5, growing with depth as the official radii), lr 0.1, tv 1e-4, "
        "restarts 1. Defences in shared_gradients: prune_ratio (share of smallest entries "
        "zeroed per tensor; the official defence config uses compression 90), noise_std (additive "
        "Gaussian)."),
    deviations=(
        "Radii are relative to the initial feature's l1 norm per image (the official absolute "
        "radii are tuned to BigGAN/StyleGAN2 feature scales). The generator is the small DCGAN "
        "of priorlab.generative (3 intermediate features) instead of BigGAN/StyleGAN2; no "
        "StyleGAN noise or latent projection. Labels are given to the attacker (the paper "
        "restores them with iDLG for one image and assumes them for batches). The best output "
        "is chosen per batch by the matching loss, not per image. Pixel-space inversion starts "
        "from uniform noise and clips to [0, 1]; no BN-statistics, group or image-norm "
        "regularisers (their official weights are 0 for GIFD). The reproduction's metric matches "
        "reconstructions to private images one-to-one by MSE and uses an evaluation "
        "classifier's feature distance in place of LPIPS."),
    claim_scope=(
        "The paper claims GIFD beats IG, GI, GIAS and GGL in PSNR/LPIPS/SSIM on ImageNet and "
        "FFHQ with BigGAN/StyleGAN2 against ResNet clients, also out of distribution and under "
        "defences. Here: 16x16 digits, a small DCGAN and a two-layer CNN client, batches of 4, "
        "against IG and GI with equal step budgets, clean and with 90% gradient pruning. "
        "GIAS/GGL, OOD data and large models are not run."),
    component=invert_features,
    adapter=None,
    example=None,
    reproduction="p052_gifd",
    tags=("gradient inversion", "federated learning", "privacy", "attack", "gan", "generative"),
))
