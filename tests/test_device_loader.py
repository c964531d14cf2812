"""The device-resident loader reproduces the reference augmentation: same pixels for a given crop offset
and flip as torchvision, offsets uniform over 0..2p, flips at rate 1/2, every image once per epoch."""
import math

import pytest
import torch
from torchvision.transforms import functional as TF

from sddlib.data.build import TensorImageDataset
from sddlib.data.device import DeviceImageDL, crop_flip


def _images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("padding", [2, 4])
def test_crop_flip_equals_torchvision_for_every_offset_and_flip(padding):
    images = _images(3)
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            for flip in (False, True):
                offsets = torch.tensor([[top, left]] * len(images))
                flips = torch.tensor([flip] * len(images))
                ours = crop_flip(images, offsets, flips, padding)
                for img, got in zip(images, ours):
                    want = TF.crop(TF.pad(img, [padding]), top, left, 32, 32)   # RandomCrop(32, padding)
                    want = TF.hflip(want) if flip else want                    # then RandomHorizontalFlip
                    assert torch.equal(got, want), (top, left, flip)


def test_crop_flip_mixes_offsets_within_one_batch():
    images = _images(4)
    offsets = torch.tensor([[0, 8], [8, 0], [4, 4], [1, 7]])
    flips = torch.tensor([True, False, True, False])
    ours = crop_flip(images, offsets, flips, 4)
    for img, (top, left), flip, got in zip(images, offsets.tolist(), flips.tolist(), ours):
        want = TF.crop(TF.pad(img, [4]), top, left, 32, 32)
        assert torch.equal(got, TF.hflip(want) if flip else want)


def _position_images(n, size=32):
    """Channel 0 holds row + 1 and channel 1 column + 1 of every pixel, so a crop's offset and flip can
    be read back from its output (padding shows as 0)."""
    rows = torch.arange(1, size + 1).view(size, 1).expand(size, size)
    cols = torch.arange(1, size + 1).view(1, size).expand(size, size)
    one = torch.stack([rows, cols, torch.zeros_like(rows)]).to(torch.uint8)
    return one.expand(n, 3, size, size).contiguous()


def _read_back(batch, padding):
    """(row offset, column offset, flipped) of each augmented image of a position batch."""
    v = (batch * 255).round().long()                       # mean 0, std 1: values are pixel / 255
    centre_row, left, right = v[:, 0, 16, 16], v[:, 1, 16, 15], v[:, 1, 16, 16]
    flipped = right < left
    top = centre_row - 1 - 16 + padding
    col = torch.where(flipped, right - 1 - 15 + padding, right - 1 - 16 + padding)
    return top, col, flipped


def test_augmentation_statistics_match_the_reference_distribution():
    padding, n = 4, 9000
    dl = DeviceImageDL(TensorImageDataset(_position_images(n), torch.zeros(n)), bs=500, mean=(0, 0, 0),
                       std=(1, 1, 1), shuffle=True, padding=padding, flip=True, seed=3)
    tops, cols, flips = map(torch.cat, zip(*(_read_back(x, padding) for x, _ in dl)))
    assert len(tops) == n
    k = 2 * padding + 1
    for offsets in (tops, cols):
        counts = torch.bincount(offsets, minlength=k)
        assert len(counts) == k and offsets.min() == 0          # nothing outside 0..2p
        expected, sd = n / k, math.sqrt(n * (1 / k) * (1 - 1 / k))
        assert ((counts - expected).abs() < 5 * sd).all(), counts.tolist()
    rate = flips.float().mean().item()
    assert abs(rate - 0.5) < 5 * math.sqrt(0.25 / n), rate
    # offsets and flips independent of each other: flip rate in each row-offset bin near 1/2 as well
    for t in range(k):
        sel = flips[tops == t].float()
        assert abs(sel.mean().item() - 0.5) < 5 * math.sqrt(0.25 / len(sel))


def test_no_flip_and_padding_two_as_the_digit_mosaics():
    n = 2000
    dl = DeviceImageDL(TensorImageDataset(_position_images(n), torch.zeros(n)), bs=250, mean=(0, 0, 0),
                       std=(1, 1, 1), shuffle=True, padding=2, flip=False, seed=0)
    tops, cols, flips = map(torch.cat, zip(*(_read_back(x, 2) for x, _ in dl)))
    assert not flips.any()
    assert set(tops.tolist()) == set(range(5)) and set(cols.tolist()) == set(range(5))


def test_epoch_is_a_permutation_and_batches_follow_drop_last():
    n = 103
    labels = torch.arange(n)
    for drop_last, batches in ((False, 11), (True, 10)):
        dl = DeviceImageDL(TensorImageDataset(_images(n), labels), bs=10, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True,
                           drop_last=drop_last, padding=4, flip=True, seed=1)
        assert len(dl) == batches
        seen = torch.cat([y for _, y in dl])
        assert len(seen) == (100 if drop_last else n) and len(set(seen.tolist())) == len(seen)
        if not drop_last:
            assert sorted(seen.tolist()) == list(range(n))


def test_unaugmented_split_equals_the_reference_dataset_pixel_for_pixel():
    images, labels = _images(20), torch.arange(20) % 7
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    ref = TensorImageDataset(images, labels, transform=None, mean=mean, std=std)
    dl = DeviceImageDL(TensorImageDataset(images, labels), bs=8, mean=mean, std=std)
    got_x, got_y = map(torch.cat, zip(*dl))
    want_x = torch.stack([ref[i][0] for i in range(20)])
    assert torch.equal(got_x, want_x) and torch.equal(got_y, labels)


def test_same_seed_same_batches_and_epochs_differ():
    def epochs(seed):
        dl = DeviceImageDL(TensorImageDataset(_images(64), torch.arange(64)), bs=16, mean=(0,) * 3, std=(1,) * 3, shuffle=True,
                           padding=4, flip=True, seed=seed)
        return [torch.cat([x for x, _ in dl]) for _ in range(2)]
    a, b = epochs(5), epochs(5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], epochs(6)[0])


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_trains_in_a_fastai_learner():
    import torch.nn as nn
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy

    images, labels = _images(64), torch.arange(64) % 4
    train = DeviceImageDL(TensorImageDataset(images, labels), bs=16, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, padding=4,
                          flip=True)
    valid = DeviceImageDL(TensorImageDataset(images[:32], labels[:32]), bs=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    learn = Learner(DataLoaders(train, valid, device="cpu"), model, loss_func=nn.CrossEntropyLoss(),
                    metrics=accuracy)
    with learn.no_logging(), learn.no_bar():
        learn.fit(1, 0.01)
    loss, acc = learn.validate()
    assert math.isfinite(loss)
    preds, targs = learn.get_preds()
    assert preds.shape == (32, 4) and torch.equal(targs, labels[:32])
    assert acc == pytest.approx((preds.argmax(1) == targs).float().mean().item())


def test_in_memory_loaders_default_to_the_device_pipeline(tmp_path):
    from fastai.data.load import DataLoader

    from fake_datasets import write_tiny_cifar100
    from sddlib.data import cifar100, digit_mosaic, imagenet

    write_tiny_cifar100(tmp_path / "c", n_train=20, n_test=10, seed=0)
    fast = cifar100(tmp_path / "c", bs=8, num_workers=0, download=False)
    ref = cifar100(tmp_path / "c", bs=8, num_workers=0, download=False, pipeline="workers")
    assert isinstance(fast.train, DeviceImageDL) and not isinstance(ref.train, DeviceImageDL)
    assert isinstance(ref.train, DataLoader) and (fast.train.padding, fast.train.flip) == (4, True)
    assert len(fast.train) == len(ref.train) == 3
    # the unaugmented split is the same tensors either way; the dataset stays the reference one
    for (xf, yf), (xr, yr) in zip(fast.valid, ref.valid):
        assert torch.equal(xf, xr) and torch.equal(yf, yr)
    assert fast.train_ds is fast.train.dataset and len(fast.train_ds[0]) == 2
    mosaics = digit_mosaic(tmp_path / "m", bs=16, n_train=60, n_test=20, num_workers=0)
    assert (mosaics.train.padding, mosaics.train.flip) == (2, False)
    assert mosaics.valid.layout is mosaics.valid_ds.layout        # fastai's delegation still reaches it
    with pytest.raises(ValueError, match="pipeline='device' is not available for imagenet"):
        imagenet(tmp_path / "nowhere", pipeline="device")
    with pytest.raises(ValueError, match="pipeline='gpu' is not available for cifar100"):
        cifar100(tmp_path / "c", download=False, pipeline="gpu")
