"""Paper card (seed 42): latent-quantised variational purifier against adversarial inputs."""

from __future__ import annotations

from priorlab.nn.purifier import QuantisedVAEPurifier
from priorlab.registry import MethodCard, Paper, register

USAGE = """\
import torch
from priorlab.nn.purifier import PurifiedClassifier, QuantisedVAEPurifier, purifier_loss
from priorlab.robust import pgd

torch.manual_seed(0)
x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
purifier = QuantisedVAEPurifier(64, hidden=32, latent=8, quant_step=0.5)
opt = torch.optim.Adam(purifier.parameters(), lr=1e-3)
for step in range(5):                        # trained on clean images only, no labels
    recon, mu, logvar = purifier(x)
    loss = purifier_loss(x, recon, mu, logvar)
    opt.zero_grad(); loss.backward(); opt.step()
classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # any classifier
defended = PurifiedClassifier(purifier.eval(), classifier)
x_adv = pgd(classifier, x, y, eps=0.1, alpha=0.025, steps=3)     # grey-box: attack f alone
preds = defended(x_adv).argmax(1)
adaptive = pgd(PurifiedClassifier(purifier, classifier, bpda=True), x, y, 0.1, 0.025, 3, eot=2)
"""

register(MethodCard(
    id="quantised-purifier",
    name="Latent-quantised variational purifier",
    family="N: noisy labels, distillation, robustness",
    kind="module",
    paper=Paper(
        title="Variational Inference with Latent Space Quantization for Adversarial Resilience",
        authors="Vinay Kyatham et al.", venue="ICPR", year=2020, arxiv="1903.09940",
        code_url="", licence="no official code", seed_id=42),
    summary=("A VAE-style filter in front of any classifier: spectral-normalised (Lipschitz) "
             "encoder -> Gaussian latent (reparametrised) -> uniform quantisation "
             "z_q = step*round(z/step) with straight-through gradients -> decoder, trained on "
             "clean data with reconstruction + KL; at test time inputs are purified "
             "(encode, quantise, decode) before classification."),
    usage=USAGE,
    hyperparameters=("quant_step (latent grid spacing, default 0.5: larger snaps bigger "
                     "perturbations back but blurs reconstructions), latent size (16), kl_weight "
                     "(1 = the ELBO; the reproduction uses 0.1, see deviations), spectral norm on every encoder layer (Lipschitz bound 1 on "
                     "x -> mu). Test-time purification samples the posterior, as trained."),
    deviations=("No official code: architecture sizes (MLP 64-256-256-16 encoder and mirror "
                "decoder), step 0.5 and Adam lr 1e-3 are ours. The reproduction weights the KL by 0.1 (chosen on validation clean accuracy: with the full ELBO a Lipschitz-1 encoder on 8x8 digits keeps only ~45% clean accuracy). The log-variance head is not "
                "spectral-normalised (it sets the noise scale, not the mean path). The paper "
                "evaluates MNIST/Fashion-MNIST/CIFAR-10 with convolutional nets; we use 8x8 "
                "digits and MLPs."),
    claim_scope=("Paper: resilience of purified classifiers to FGSM/PGD/C&W and black-box "
                 "attacks on MNIST, Fashion-MNIST and CIFAR-10, attacks mostly computed on the "
                 "classifier alone (grey-box). Here: 8x8 digits, l_inf FGSM and PGD at "
                 "eps 0.1, grey-box and adaptive (BPDA + EOT through the purifier)."),
    component=QuantisedVAEPurifier,
    adapter=None,
    reproduction="p042_purifier",
    tags=("adversarial robustness", "purification", "quantisation", "VAE"),
))
