"""The device random resized crop (issue 29) draws its boxes as torchvision's `RandomResizedCrop.get_params` does
(the distributions of area share, aspect ratio, position and the centre-crop fallback compared on many draws),
resamples them as a crop-then-resize does, and flips half of them."""
import math

import numpy as np
import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from sddlib.data.build import VariableSizeImages
from sddlib.data.device import DeviceResizedCropDL, random_resized_boxes, resized_crops

DRAWS = 8_000


def _torchvision_boxes(height, width, n):
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    return np.array([T.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)])


def _ours(height, width, n):
    gen = torch.Generator().manual_seed(0)
    return random_resized_boxes(torch.tensor([[height, width]] * n), gen).numpy()


def _figures(boxes, height, width):
    """Per box: area share, log aspect ratio, centre row and column (shares of the image), whether it is the
    centre-crop fallback (no candidate fitted)."""
    top, left, h, w = boxes.T.astype(float)
    return {"area": h * w / (height * width), "log_ratio": np.log(w / h), "row": (top + h / 2) / height,
            "col": (left + w / 2) / width}


def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical distribution functions."""
    grid = np.sort(np.concatenate([a, b]))
    return np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                  - np.searchsorted(np.sort(b), grid, "right") / len(b)).max()


@pytest.mark.parametrize("height,width", [(300, 200), (64, 256), (40, 41)])
def test_boxes_are_distributed_as_torchvisions(height, width):
    ours, theirs = _ours(height, width, DRAWS), _torchvision_boxes(height, width, DRAWS)
    assert (ours[:, 2] >= 1).all() and (ours[:, 3] >= 1).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    critical = 1.95 * math.sqrt(2 / DRAWS)                   # the KS test's bound at the 0.001 level
    for name, values in _figures(ours, height, width).items():
        assert _ks(values, _figures(theirs, height, width)[name]) < critical, name


def test_the_centre_crop_fallback_when_no_candidate_fits():
    height, width = 10, 400                                   # ratio 40: few candidates fit
    ours, theirs = _ours(height, width, DRAWS), _torchvision_boxes(height, width, DRAWS)
    fallback = np.array([(height - 10) // 2, (width - 13) // 2, 10, 13])   # full height, width round(10 * 4/3)
    rate_ours, rate_theirs = (ours == fallback).all(1).mean(), (theirs == fallback).all(1).mean()
    assert rate_theirs > 0.05 and abs(rate_ours - rate_theirs) < 4 * math.sqrt(rate_theirs / DRAWS) + 0.01
    narrow = _ours(400, 10, 200)                               # and a tall one: full width, height round(10 / (3/4))
    assert ((narrow == [(400 - 13) // 2, 0, 13, 10]).all(1)).any()


def _smooth(height, width):
    """A smooth uint8 picture (3 x H x W) whose resampling differs only by rounding between resamplers."""
    y, x = torch.meshgrid(torch.arange(height) / height, torch.arange(width) / width, indexing="ij")
    planes = [128 + 100 * torch.sin(2.1 * x + 1.3 * y), 128 + 90 * torch.cos(1.7 * y - 0.9 * x), 60 + 150 * x * y]
    return torch.stack(planes).round().clamp(0, 255).to(torch.uint8)


def _canvas(images):
    """Images (3 x H x W) in canvas slots as `VariableSizeImages` keeps them: short side vertical."""
    side = min(min(img.shape[1:]) for img in images)
    assert all(min(img.shape[1:]) == side for img in images)
    length = max(max(img.shape[1:]) for img in images)
    canvas = torch.zeros(len(images), 3, side, length, dtype=torch.uint8)
    transposed = torch.tensor([img.shape[1] > img.shape[2] for img in images])
    for k, img in enumerate(images):
        img = img.transpose(1, 2) if transposed[k] else img
        canvas[k, :, :, :img.shape[2]] = img
    return canvas, torch.tensor([img.shape[1:] for img in images]), transposed


def test_resampling_is_pils_crop_then_resize():
    from PIL import Image
    images = [_smooth(40, 60), _smooth(70, 40)]                         # a landscape and a portrait picture
    canvas, sizes, transposed = _canvas(images)
    for boxes, size in (([[5, 7, 20, 30], [10, 3, 25, 25]], 48),      # enlarged
                        ([[0, 0, 40, 60], [4, 6, 60, 30]], 20),       # shrunk (antialiased)
                        ([[3, 1, 30, 50], [2, 5, 40, 22]], 33)):      # mixed
        ours = resized_crops(canvas, transposed, torch.tensor(boxes), size)
        for img, box, got in zip(images, boxes, ours):
            pil = TF.to_pil_image(img)                                  # what the per-image path does: PIL
            want = TF.pil_to_tensor(TF.resized_crop(pil, *box, [size, size], Image.BILINEAR)).float()
            assert got.shape == (3, size, size) and (got - want).abs().max() <= 1   # PIL's fixed-point rounding


@pytest.mark.slow  # many batches of 224-px crops
def test_the_loader_crops_to_the_size_and_flips_half():
    ramp = torch.arange(64, dtype=torch.uint8).mul(4).expand(3, 48, 64).contiguous()   # brighter to the right
    ds = VariableSizeImages(*_canvas([ramp] * 100 + [ramp.transpose(1, 2)] * 100), [0] * 200)
    dl = DeviceResizedCropDL(ds, bs=50, mean=(0, 0, 0), std=(1, 1, 1), size=16, shuffle=True, seed=3)
    assert torch.cat([b for b, _ in dl]).shape == (200, 3, 16, 16)
    order = torch.cat([y for _, y in dl.new(shuffle=False)])
    landscape = torch.cat([b for b, _ in dl.new(shuffle=False)])[:100]
    assert (landscape[:, 0, :, -1] != landscape[:, 0, :, 0]).all()     # a ramp along the columns, either way
    flipped = (landscape[:, 0, :, -1] < landscape[:, 0, :, 0]).all(1).float().mean()
    assert 0.3 < flipped < 0.7 and len(order) == 200
    again = torch.cat([b for b, _ in dl.new(flip=False, shuffle=False)])
    assert (again[:100, 0, :, -1] > again[:100, 0, :, 0]).all()        # unflipped: brighter to the right
    assert (again[100:, 0, -1, :] > again[100:, 0, 0, :]).all()        # the portrait ones: brighter downwards
