"""Paper card: Transformers as Support Vector Machines (seed 23).

The components live in :mod:`priorlab.nn.attention_svm`: the single-head attention model, the
Att-SVM solver :func:`att_svm`, the alignment measure :func:`direction_cosine` and the
normalised gradient step :class:`NormalizedGD` of the official experiments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.nn.attention_svm import NormalizedGD, SingleHeadAttention, att_svm, direction_cosine
from priorlab.registry import Example, MethodCard, Paper, register

USAGE = """\
import torch
import torch.nn.functional as F
from priorlab.nn.attention_svm import NormalizedGD, SingleHeadAttention, att_svm, direction_cosine

g = torch.Generator().manual_seed(0)
n, T, d = 10, 5, 6
X = torch.randn(n, T, d, generator=g, dtype=torch.float64)
X = X / X.norm(dim=-1, keepdim=True)                      # unit-norm tokens
z = torch.randn(n, d, generator=g, dtype=torch.float64)   # one query per sequence
y = torch.where(torch.randn(n, generator=g) > 0, 1.0, -1.0).double()

torch.manual_seed(0)
model = SingleHeadAttention(d, parametrisation="W")       # f = v^T X^T softmax(X W z)
optimizer = NormalizedGD(model.parameters(), lr=0.1)      # W <- W - lr * grad / ||grad||
for step in range(300):
    loss = F.softplus(-y * model(X, z)).mean()            # logistic loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

selected = model.attention(X, z).argmax(dim=-1)           # the token each sequence attends to
W_mm = att_svm(X, z, selected, norm="fro")                # norm="nuc" for (K, Q); needs cvxpy
print("cosine to the SVM direction:", direction_cosine(model.combined_weight(), W_mm))
"""


def _example() -> Example:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 4, 3, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=-1, keepdim=True)
    y = torch.where(torch.randn(8, generator=g) > 0, 1.0, -1.0).double()

    def model_fn():
        torch.manual_seed(0)
        return SingleHeadAttention(3, parametrisation="KQ")

    def logistic(outputs, targets):
        return F.softplus(-targets * outputs).mean()

    z = torch.randn(8, 3, dtype=torch.float64)
    return Example(
        model_fn=model_fn,
        batch=(X, y),  # queries default to each sequence's last token (self-attention)
        loss_fn=logistic,
        optimizer_fn=lambda params: NormalizedGD(params, lr=0.1),
        adapter_fn=None,
        # no strength knob: the method is the model and its implicit bias, not a regulariser
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: SingleHeadAttention(3, parametrisation="QK"),
            lambda: SingleHeadAttention(0),
            lambda: SingleHeadAttention(3, head=torch.ones(4)),
            lambda: SingleHeadAttention(3)(torch.ones(2, 4, 5)),
            lambda: SingleHeadAttention(3)(X, torch.ones(8, 2)),
            lambda: att_svm(X, z, torch.zeros(8, dtype=torch.long), norm="l1"),
            lambda: att_svm(X, z, torch.full((8,), 4)),
            lambda: att_svm(X, z, torch.zeros(3, dtype=torch.long)),
            lambda: att_svm(X * float("nan"), z, torch.zeros(8, dtype=torch.long)),
            lambda: direction_cosine(torch.zeros(3, 3), torch.ones(3, 3)),
            lambda: NormalizedGD([torch.nn.Parameter(torch.ones(2))], lr=-0.1),
        ),
    )


CARD = register(MethodCard(
    id="att-svm",
    name="Transformers as SVMs (Att-SVM)",
    family="T: training dynamics",
    kind="function",
    paper=Paper(
        title="Transformers as Support Vector Machines",
        authors="Davoud Ataee Tarzanagh et al.",
        venue="arXiv",
        year=2023,
        arxiv="2308.16898",
        code_url="https://github.com/umich-sota/TF-as-SVM",
        licence="no licence file in the official repository",
        seed_id=23,
    ),
    summary=("The implicit bias of attention: gradient descent on f = v^T X^T softmax(X W z) "
             "grows W without bound but converges in direction to the max-margin Att-SVM "
             "min ||W|| s.t. (x_opt - x_t)^T W z >= 1, which separates the token each sequence "
             "selects from its other tokens: Frobenius norm when W is trained, nuclear norm when "
             "W = K Q^T. att_svm solves that SVM; SingleHeadAttention is the model."),
    usage=USAGE,
    hyperparameters=(
        "Official experiments (local_converge.ipynb): logistic loss, normalised GD "
        "W <- W - 0.1 * grad / ||grad||_F for 2,000 steps in float64, head v fixed (a random "
        "unit vector), unit-norm tokens and cross-attention queries; K and Q (d x d) each get "
        "their own normalised step and the loss adds eps * (||K||^2 + ||Q||^2) with eps = "
        "float64 epsilon to keep their norms balanced. The SVM is solved for the tokens the "
        "trained attention selects (argmax); solve it for the globally optimal tokens "
        "(argmax_t y_i * v^T x_it) to test global convergence. Nothing to tune in att_svm."),
    deviations=(
        "The Frobenius-norm SVM is solved exactly by Lawson & Hanson's reduction of "
        "least-distance programming to NNLS (SciPy) instead of cvxpy, so it needs no optional "
        "dependency (tests check it against cvxpy to ~1e-9 in cosine); the nuclear-norm SVM "
        "uses cvxpy like the official code (pip install priorlab[svm]). The model computes "
        "scores x_t^T W z directly (the official nn.Linear stores W transposed, so its "
        "W.weight is our W^T; the official notebooks transpose it before comparing). The head v "
        "is a buffer rather than an untrained nn.Parameter."),
    claim_scope=(
        "The paper proves directional convergence (global under conditions such as "
        "over-parameterisation, local in general) and verifies it on small synthetic problems "
        "like ours (n sequences of T unit tokens, d up to 10-20). Our reproduction runs the "
        "official protocol at the catalog's n=10, T=5, d=6 and tests both the bias of each "
        "parametrisation (closer to its own norm's SVM than to the other's) and the catalog's "
        "bar (cosine > 0.99) at the official 2,000 steps. Not tested: the global-convergence "
        "conditions, nonlinear heads, and real transformers."),
    component=att_svm,
    adapter=None,
    example=_example,
    reproduction="p023_tf_svm",
    tags=("implicit-bias", "attention", "max-margin", "svm"),
))
