"""The INR toolkit: coordinate conventions, LIIF's decoder, networks, fitting and metrics."""

import math

import numpy as np
import pytest
import torch

from priorlab import fields
from priorlab.errors import PriorlabError


def test_grid_coords_are_pixel_centres_in_row_major_order():
    c = fields.grid_coords(2, 4)
    assert c.shape == (8, 2)
    assert torch.allclose(c[0], torch.tensor([-0.5, -0.75]))
    assert torch.allclose(c[3], torch.tensor([-0.5, 0.75]))
    assert torch.allclose(c[4], torch.tensor([0.5, -0.75]))


def test_sampling_at_the_grid_returns_the_image():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 5, 7)
    coords = fields.grid_coords(5, 7).expand(2, -1, -1)
    for mode in ("bilinear", "nearest", "bicubic"):
        values = fields.sample_image(image, coords, mode=mode)
        assert torch.allclose(values, image.flatten(2).transpose(1, 2), atol=1e-5)
    with pytest.raises(PriorlabError, match="bilinear"):
        fields.sample_image(image, coords, mode="bilinar")
    coords_, values_ = fields.image_to_field(image[0])
    assert torch.equal(values_[8], image[0, :, 1, 1])
    assert torch.equal(coords_, fields.grid_coords(5, 7))


def test_load_photo_shape_and_range():
    photo = fields.load_photo("camera", size=16)
    assert photo.shape == (1, 16, 16) and 0 <= photo.min() and photo.max() <= 1
    assert fields.load_photo("astronaut", size=8, grey=False).shape == (3, 8, 8)
    with pytest.raises(PriorlabError, match="camera"):
        fields.load_photo("camra")


def _constant_decoder(**flags) -> fields.LocalImplicitDecoder:
    decoder = fields.LocalImplicitDecoder(1, 1, hidden=[4], **flags)
    with torch.no_grad():  # output = the (unfolded centre) code: an exact interpolation check
        first, last = decoder.net[0], decoder.net[2]
        first.weight.zero_(), first.bias.zero_(), last.weight.zero_(), last.bias.zero_()
        centre = 4 if decoder.feat_unfold else 0
        first.weight[0, centre] = 1.0
        last.weight[0, 0] = 1.0
    return decoder


def test_liif_local_ensemble_is_bilinear_interpolation_of_codes():
    # with an MLP that returns its code, the area-weighted ensemble is bilinear interpolation
    torch.manual_seed(0)
    features = torch.rand(1, 1, 4, 4) + 0.1  # positive so the ReLU passes the code through
    decoder = _constant_decoder()
    coords = fields.grid_coords(7, 7).unsqueeze(0) * 0.7  # inside the codes' convex hull
    out = decoder(features, coords, fields.query_cell(coords, 7, 7))
    expected = fields.sample_image(features, coords, mode="bilinear")
    assert torch.allclose(out, expected, atol=1e-5)


def test_liif_render_any_scale_and_codes_reproduced_at_native_grid():
    torch.manual_seed(0)
    features = torch.rand(2, 1, 4, 4) + 0.1
    decoder = _constant_decoder(local_ensemble=False)
    assert torch.allclose(fields.render(decoder, features, 4, 4), features, atol=1e-5)
    trained = fields.LocalImplicitDecoder(3, 2, hidden=[8, 8])
    for size in [(5, 9), (13, 3)]:
        image = fields.render(trained, torch.rand(2, 3, 4, 4), *size, chunk=7)
        assert image.shape == (2, 2, *size) and torch.isfinite(image).all()


def test_liif_bad_input_is_named():
    decoder = fields.LocalImplicitDecoder(3, 1, hidden=[8])
    features, coords = torch.rand(1, 3, 4, 4), torch.rand(1, 5, 2)
    with pytest.raises(PriorlabError, match="features"):
        decoder(torch.rand(1, 2, 4, 4), coords, fields.query_cell(coords, 4, 4))
    with pytest.raises(PriorlabError, match="cell"):
        decoder(features, coords)
    with pytest.raises(PriorlabError, match="coords"):
        decoder(features, torch.rand(1, 5, 3), None)


def test_fourier_features_and_siren():
    ff = fields.FourierFeatures(2, n_features=8, scale=3.0, seed=1)
    x = torch.rand(5, 2)
    z = ff(x)
    assert z.shape == (5, 16)
    assert torch.allclose(z[:, :8] ** 2 + z[:, 8:] ** 2, torch.ones(5, 8), atol=1e-6)
    assert torch.equal(fields.FourierFeatures(2, 8, 3.0, seed=1).B, ff.B)
    siren = fields.Siren(2, 1, hidden=32, depth=3)
    assert siren(x).shape == (5, 1)
    first = siren.body[0].linear.weight
    assert first.abs().max() <= 0.5  # first-layer init: U(-1/in, 1/in)
    assert siren.body[1].linear.weight.abs().max() <= math.sqrt(6 / 32) / 30 + 1e-7
    with pytest.raises(PriorlabError, match="coords"):
        siren(torch.rand(5, 3))
    with pytest.raises(PriorlabError, match="scale"):
        fields.FourierFeatures(2, scale=0.0)


def test_fit_field_learns_an_image_and_renders_it():
    torch.manual_seed(0)
    image = fields.load_photo("camera", size=16)
    coords, values = fields.image_to_field(image)
    model = fields.CoordinateMLP(2, 1, hidden=64, depth=3, encoding=fields.FourierFeatures(2, 32, 3.0))
    before = fields.psnr(fields.render_field(model, 16, 16), image)
    losses = fields.fit_field(model, coords, values, steps=200, lr=1e-2)
    after = fields.psnr(fields.render_field(model, 16, 16).clamp(0, 1), image)
    assert losses[-1] < losses[0] / 10 and after > before + 10
    with pytest.raises(PriorlabError, match="loss"):
        fields.fit_field(model, coords, values, steps=1, loss="l3")
    with pytest.raises(PriorlabError, match="targets"):
        fields.fit_field(model, coords, values[:3], steps=1)


def test_psnr_and_ssim_known_values():
    target = torch.zeros(1, 8, 8)
    assert fields.psnr(target + 0.1, target) == pytest.approx(20.0)
    assert fields.psnr(target, target) == math.inf
    torch.manual_seed(0)
    image = torch.rand(1, 1, 32, 32)
    assert fields.ssim(image, image) == pytest.approx(1.0)
    noisy = (image + 0.2 * torch.randn_like(image)).clamp(0, 1)
    from skimage.metrics import structural_similarity
    reference = structural_similarity(noisy[0, 0].numpy(), image[0, 0].numpy(), data_range=1.0,
                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert fields.ssim(noisy, image) == pytest.approx(reference, abs=0.02)
    assert fields.ssim(torch.rand(8, 8), torch.rand(8, 8)) < 0.5  # window shrinks to fit
    with pytest.raises(PriorlabError, match="same shape"):
        fields.psnr(torch.rand(1, 4, 4), torch.rand(1, 4, 5))
    with pytest.raises(PriorlabError, match="pred"):
        fields.psnr(torch.full((4, 4), float("nan")), torch.rand(4, 4))


def test_psnr_over_a_mask_ignores_the_other_pixels():
    target = torch.zeros(2, 1, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1.0
    pred = target + 0.1 * mask + 0.5 * (1 - mask)  # error 0.1 in the hole, 0.5 outside
    assert fields.psnr(pred, target, mask=mask) == pytest.approx(20.0)
    assert fields.psnr(pred, target, mask=torch.ones_like(mask)) == pytest.approx(fields.psnr(pred, target))
    with pytest.raises(PriorlabError, match="masked pixel"):
        fields.psnr(pred, target, mask=torch.zeros_like(mask))
    with pytest.raises(PriorlabError, match="mask"):
        fields.psnr(pred, target, mask=torch.ones(2, 1, 4, 5))


def test_mask_metrics_known_values():
    a = torch.zeros(10, 10, dtype=torch.bool)
    b = a.clone()
    a[2:6, 2:6] = True
    b[2:6, 4:8] = True
    assert fields.iou(a, b) == pytest.approx(8 / 24)
    assert fields.iou(a, a) == 1.0 and fields.iou(torch.zeros_like(a), torch.zeros_like(a)) == 1.0
    assert fields.boundary_fscore(a, a) == 1.0
    shifted = torch.roll(a, 1, dims=1)
    assert fields.boundary_fscore(a, shifted, tolerance=1) == 1.0
    assert fields.boundary_fscore(a, shifted, tolerance=0) < 1.0
    far = torch.zeros_like(a)
    far[7:9, 7:9] = True
    assert fields.boundary_fscore(a, far, tolerance=1) == 0.0
    assert fields.boundary_fscore(a, torch.zeros_like(a)) == 0.0
    with pytest.raises(PriorlabError, match="bool"):
        fields.iou(a.float(), b.float())


def test_chamfer_distance_known_values():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    # a -> b: 1 and sqrt(2); b -> a: 1
    assert fields.chamfer_distance(a, b) == pytest.approx((1 + math.sqrt(2)) / 2 + 1)
    assert fields.chamfer_distance(a, b, squared=True) == pytest.approx(1.5 + 1)
    assert fields.chamfer_distance(a, a) == 0.0
    rng = np.random.default_rng(0)
    x, y = torch.tensor(rng.random((50, 3))), torch.tensor(rng.random((40, 3)))
    assert fields.chamfer_distance(x, y, chunk=7) == pytest.approx(fields.chamfer_distance(x, y))
    with pytest.raises(PriorlabError, match="b"):
        fields.chamfer_distance(a, torch.zeros(0, 2))
