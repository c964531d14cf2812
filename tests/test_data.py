"""sddlib.data on tiny datasets written in the real on-disk formats (tests/fake_datasets.py)."""
import os
import pickle
import time
import urllib.error
import warnings

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from fake_datasets import (CIFAR100_FINE, write_tiny_cifar100, write_tiny_cub200, write_tiny_imagenet)
from sddlib import data
from sddlib.data import (DATASETS, DatasetInfo, DatasetNotFoundError, MosaicLayout, cifar100, cub200, dataset_info,
                         denormalize, digit_mosaic, get_dataloaders, imagenet, mosaics)


def batches(dl):
    return [(x.clone(), y.clone()) for x, y in dl]


def check_info(dls, name, num_classes, image_size, mean, std):
    info = dls.info
    assert isinstance(info, DatasetInfo) and dataset_info(dls) is info
    assert info.name == name and info.num_classes == num_classes == len(info.class_names) == dls.c
    assert info.image_size == image_size
    assert info.mean == pytest.approx(mean) and info.std == pytest.approx(std)
    assert all(isinstance(v, tuple) for v in (info.class_names, info.mean, info.std))
    assert dls.train.shuffle and not dls.valid.shuffle and not dls.valid.drop_last
    assert not any(hasattr(dls, a) for a in ("class_names", "num_classes", "mean", "std", "image_size"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the network: torchvision's downloader raises as it does offline."""
    import torchvision.datasets.utils as tv_utils

    def no_network(url, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_url", no_network)


# --- CIFAR-100 ---------------------------------------------------------------------------------

@pytest.fixture
def tiny_cifar(tmp_path):
    write_tiny_cifar100(tmp_path, n_train=20, n_test=10, seed=0)
    return tmp_path


def read_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_cifar100_batches_and_attributes(tiny_cifar):
    dls = cifar100(tiny_cifar, bs=8, num_workers=0, download=False)
    check_info(dls, "cifar100", 100, 32, data.CIFAR100_MEAN, data.CIFAR100_STD)
    assert list(dls.info.class_names) == CIFAR100_FINE
    assert len(dls.train_ds) == 20 and len(dls.valid_ds) == 10
    assert len(dls.train) == 3 and not dls.train.drop_last  # reference: shuffle=True, no drop_last
    x, y = dls.train.one_batch()
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    # valid: dataset order, ToTensor + Normalize of the pickled pixels, labels as pickled
    raw = read_pickle(tiny_cifar / "cifar-100-python" / "test")
    vb = batches(dls.valid)
    assert [b[0].shape[0] for b in vb] == [8, 2]
    xs, ys = torch.cat([b[0] for b in vb]), torch.cat([b[1] for b in vb])
    assert ys.tolist() == raw["fine_labels"]
    pixels = torch.from_numpy(raw["data"]).view(10, 3, 32, 32).float() / 255
    mean, std = torch.tensor(dls.info.mean).view(3, 1, 1), torch.tensor(dls.info.std).view(3, 1, 1)
    torch.testing.assert_close(xs, (pixels - mean) / std)
    torch.testing.assert_close(denormalize(xs, dls), pixels)  # denormalize inverts the normalisation
    torch.testing.assert_close(torch.cat([b[0] for b in batches(dls.valid)]), xs, rtol=0, atol=0)  # deterministic


def test_cifar100_train_augmentation_is_the_reference_pipeline(tiny_cifar):
    dls = cifar100(tiny_cifar, bs=8, num_workers=0, download=False)
    ds = dls.train_ds
    raw = read_pickle(tiny_cifar / "cifar-100-python" / "train")
    from PIL import Image
    ref = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                     T.Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))])
    for i in range(6):  # same RNG draws, same pixels as mdistiller's PIL path
        torch.manual_seed(100 + i)
        ours, y = ds[i]
        torch.manual_seed(100 + i)
        theirs = ref(Image.fromarray(raw["data"][i].reshape(3, 32, 32).transpose(1, 2, 0)))
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert y == raw["fine_labels"][i]
    # random: the same item differs across draws; epochs come in different orders
    assert any(not torch.equal(ds[i][0], ds[i][0]) for i in range(5))
    (e1, e2) = [torch.cat([b[1] for b in batches(dls.train)]) for _ in range(2)]
    assert sorted(e1.tolist()) == sorted(e2.tolist()) and not torch.equal(e1, e2)


def test_cifar100_subset_and_seeded_order(tiny_cifar):
    dls = cifar100(tiny_cifar, bs=4, subset=5, num_workers=0, download=False)
    raw = read_pickle(tiny_cifar / "cifar-100-python" / "train")
    assert len(dls.train_ds) == 5 and len(dls.valid_ds) == 5
    assert dls.train_ds.targets.tolist() == raw["fine_labels"][:5]
    order = lambda seed: [  # noqa: E731
        torch.cat([b[1] for b in cifar100(tiny_cifar, bs=4, num_workers=0, seed=seed, download=False).train]).tolist()
        for _ in range(1)][0]
    assert order(1) == order(1) and order(1) != order(2)


def test_cifar100_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=True") as e:
        cifar100(tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere") in str(e.value) and isinstance(e.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="download failed: URLError") as e:  # offline (fixture)
        cifar100(tmp_path / "offline", download=True)
    assert str(tmp_path / "offline") in str(e.value) and "network access" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_cifar100_corrupt_folder(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "meta").write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="incomplete or unreadable"):
        cifar100(tmp_path, download=False)


# --- CUB-200-2011 ------------------------------------------------------------------------------

def test_cub200_official_split(tmp_path):
    base = write_tiny_cub200(tmp_path, n_classes=3, per_class=4, size=64)
    dls = cub200(tmp_path, bs=4, num_workers=0, download=False)
    check_info(dls, "cub200", 200, 224, data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert dls.info.class_names[:3] == ("Black footed Albatross", "Laysan Albatross", "Sooty Albatross")
    ids = dict(line.split() for line in (base / "images.txt").read_text().splitlines())
    is_train = dict(line.split() for line in (base / "train_test_split.txt").read_text().splitlines())
    label = dict(line.split() for line in (base / "image_class_labels.txt").read_text().splitlines())
    want = {s: sorted((str(base / "images" / ids[i]), int(label[i]) - 1) for i in ids if is_train[i] == s)
            for s in "10"}
    assert dls.train_ds.samples == want["1"] and dls.valid_ds.samples == want["0"]  # ImageFolder (sorted) order
    assert len(dls.train_ds) == 6 and len(dls.train) == 1 and dls.train.drop_last  # reference: drop_last=True
    x, y = dls.train.one_batch()
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.long
    v1, v2 = batches(dls.valid), batches(dls.valid)
    assert [b[0].shape[0] for b in v1] == [4, 2]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(v1, v2))
    assert torch.cat([b[1] for b in v1]).tolist() == [t for _, t in want["0"]]
    assert_reference_augmentation(dls.train_ds, [T.Resize((256, 256)), T.RandomCrop(224), T.RandomHorizontalFlip()])
    # un-normalised, the first test image is the reference test pipeline's pixels: Resize + CenterCrop + ToTensor
    from PIL import Image
    with Image.open(want["0"][0][0]) as img:
        pixels = T.Compose([T.Resize((256, 256)), T.CenterCrop(224), T.ToTensor()])(img.convert("RGB"))
    torch.testing.assert_close(denormalize(v1[0][0][0], dls), pixels, rtol=0, atol=1e-6)
    sub = cub200(tmp_path, bs=2, subset=3, num_workers=0, download=False)
    assert sub.train_ds.samples == want["1"][:3] and sub.valid_ds.samples == want["0"][:3]


def assert_reference_augmentation(dataset, steps):
    """The first training item under two seeds: the reference's PIL transforms (`steps`, then ToTensor and the ImageNet
    normalisation) drawn from the same seed give its pixels exactly; the two seeds give two crops."""
    from PIL import Image
    reference = T.Compose([*steps, T.ToTensor(), T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    path, _ = dataset.samples[0]
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with Image.open(path) as img:
            want = reference(img.convert("RGB"))
        torch.manual_seed(seed)
        draws.append(dataset[0][0])
        assert torch.equal(draws[-1], want), seed
    assert not torch.equal(*draws)


def test_cub200_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CUB_200_2011") as e:
        cub200(tmp_path / "cub", download=False)
    assert str(tmp_path / "cub") in str(e.value)
    with pytest.raises(DatasetNotFoundError, match="download failed") as e:
        cub200(tmp_path / "cub", download=True)
    assert str(tmp_path / "cub") in str(e.value) and "network access" in str(e.value)


# --- ImageNet ----------------------------------------------------------------------------------

def test_imagenet_folders_and_class_names(tmp_path):
    write_tiny_imagenet(tmp_path, n_classes=3, per_class=4, size=64)
    dls = imagenet(tmp_path, bs=4, num_workers=0, download=False)
    check_info(dls, "imagenet", 3, 224, data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert dls.info.class_names == ("tench", "goldfish", "great white shark")
    assert len(dls.train_ds) == 12 and len(dls.valid_ds) == 12 and len(dls.train) == 3
    x, y = dls.valid.one_batch()
    assert x.shape == (4, 3, 224, 224) and y.dtype == torch.long and y.tolist() == [0, 0, 0, 0]
    assert torch.equal(x, dls.valid.one_batch()[0])
    assert_reference_augmentation(dls.train_ds, [T.RandomResizedCrop(224), T.RandomHorizontalFlip()])
    assert len(imagenet(tmp_path, subset=5, num_workers=0).train_ds) == 5
    # torchvision's meta.bin, then the folder names
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    torch.save(({"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish",)}, []), tmp_path / "meta.bin")
    assert imagenet(tmp_path, num_workers=0).info.class_names == ("tench", "goldfish", "n01484850")
    (tmp_path / "meta.bin").unlink()
    assert imagenet(tmp_path, num_workers=0).info.class_names == ("n01440764", "n01443537", "n01484850")


def test_imagenet_missing(tmp_path):
    for download in (False, True):
        with pytest.raises(DatasetNotFoundError, match="image-net.org") as e:
            imagenet(tmp_path / "in1k", download=download)
        assert str(tmp_path / "in1k") in str(e.value)


# --- registry ----------------------------------------------------------------------------------

def test_get_dataloaders(tiny_cifar):
    # tests/spine_dataset.py registers "stripes" when test_spine is collected in the same process
    assert set(DATASETS) - {"stripes"} == {"cifar100", "imagenet", "cub200", "digit_mosaic", "folder"}
    with pytest.raises(ValueError, match="cifar100, cub200, digit_mosaic, folder, imagenet"):
        get_dataloaders("mnist")
    with pytest.raises(ValueError, match="data_dir"):
        get_dataloaders("cifar100")
    dls = get_dataloaders("CIFAR-100", tiny_cifar, bs=5, num_workers=0, download=False)
    assert dls.info.name == "cifar100" and dls.train.bs == 5
    assert get_dataloaders("cifar100", tiny_cifar, num_workers=0).train.bs == 64


# --- digit mosaics -----------------------------------------------------------------------------

def test_mosaic_generation_deterministic_and_disjoint():
    from sklearn.datasets import load_digits
    digit = load_digits().target
    a, b = mosaics.make_digit_mosaics(300, 100, seed=3), mosaics.make_digit_mosaics(300, 100, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = mosaics.make_digit_mosaics(300, 100, seed=4)
    assert not np.array_equal(a["x_train"], c["x_train"])
    assert np.array_equal(mosaics.make_digit_mosaics(50, 100, seed=3)["x_test"], a["x_test"])  # test set: own stream
    tr, te = set(a["train_scan_pool"].tolist()), set(a["test_scan_pool"].tolist())
    assert not tr & te and len(tr | te) == len(digit) and 0.7 < len(tr) / len(digit) < 0.8
    for split, pool in (("train", tr), ("test", te)):
        lay = MosaicLayout(scan_pool=a[f"{split}_scan_pool"], **{k: a[f"{split}_{k}"] for k in mosaics._LAYOUT_KEYS})
        used = lay.distractor_labels >= 0
        assert set(lay.target_scan.tolist()) <= pool and set(lay.distractor_scans[used].tolist()) <= pool
        assert np.array_equal(lay.labels, a[f"y_{split}"])
        assert np.array_equal(digit[lay.target_scan], lay.labels)  # the target digit is the label
        assert np.array_equal(digit[lay.distractor_scans[used]], lay.distractor_labels[used])
        assert (lay.distractor_labels != lay.labels[:, None]).all()
        assert set(lay.n_distractors.tolist()) == {1, 2, 3}
        assert (lay.distractor_scans[~used] == -1).all() and (lay.distractor_boxes[~used] == -1).all()
        ts = lay.target_box[:, 2] - lay.target_box[:, 0]
        ds = (lay.distractor_boxes[..., 2] - lay.distractor_boxes[..., 0])[used]
        assert ts.min() >= 14 and ts.max() <= 20 and ds.min() >= 8 and ds.max() <= 12
        assert np.array_equal(ts, lay.target_box[:, 3] - lay.target_box[:, 1])
        assert lay.target_box.min() >= 0 and lay.target_box.max() <= 32 and lay.distractor_boxes[used].max() <= 32
        assert np.bincount(lay.labels, minlength=10).min() >= len(lay) // 10
    # the target is painted last in light ink on a dark background: its box holds the brightest pixels
    x = a["x_test"].astype(np.float32)
    x0, y0, x1, y1 = a["test_target_box"][0]
    assert x[0, :, y0:y1, x0:x1].std() > 2 * x[0, :, :2, :].std() or x[0, :, y0:y1, x0:x1].std() > 30
    assert x[0, :, y0:y1, x0:x1].max(0).max() > x[0, :, :2, :].max(0).mean() + 20


@pytest.mark.slow  # generates the 10,000 default mosaics
def test_mosaic_default_size_generation():
    t = time.perf_counter()
    d = mosaics.make_digit_mosaics()  # the defaults the quickstart uses
    dt = time.perf_counter() - t
    print(f"\n[digit_mosaic] generated {len(d['x_train'])} + {len(d['x_test'])} mosaics in {dt:.2f} s")
    assert d["x_train"].shape == (8000, 3, 32, 32) and d["x_test"].shape == (2000, 3, 32, 32)


def test_mosaic_cache_reuse_and_corrupt_regeneration(tmp_path):
    kw = dict(n_train=300, n_test=100, seed=1, num_workers=0)
    n0 = mosaics._generation_count
    dls = digit_mosaic(tmp_path, **kw)
    path = mosaics.mosaic_cache_path(tmp_path, 300, 100, 1)
    assert path.is_file() and mosaics._generation_count == n0 + 1 and f"v{mosaics.MOSAIC_VERSION}_" in path.name
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    mtime = path.stat().st_mtime_ns
    again = digit_mosaic(tmp_path, **kw)
    assert mosaics._generation_count == n0 + 1 and path.stat().st_mtime_ns == mtime  # reused
    assert torch.equal(again.valid_ds.images, dls.valid_ds.images)
    for garbage in (b"garbage", path.read_bytes()[:1000]):  # not a zip; a truncated zip
        path.write_bytes(garbage)
        with pytest.warns(UserWarning, match="regenerating"):
            regen = digit_mosaic(tmp_path, **kw)
        assert torch.equal(regen.train_ds.images, dls.train_ds.images)
    assert mosaics._generation_count == n0 + 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        digit_mosaic(tmp_path, **kw)  # the regenerated file is valid again
    assert mosaics._generation_count == n0 + 3


def test_mosaic_dataloaders(tmp_path):
    dls = digit_mosaic(tmp_path, bs=32, n_train=300, n_test=100, seed=0, num_workers=0)
    z = np.load(mosaics.mosaic_cache_path(tmp_path, 300, 100, 0))
    check_info(dls, "digit_mosaic", 10, 32, tuple(z["mean"]), tuple(z["std"]))
    assert dls.info.class_names == tuple(str(i) for i in range(10))
    x, y = dls.train.one_batch()
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    xs = torch.cat([b[0] for b in dls.valid])
    ys = torch.cat([b[1] for b in dls.valid])
    assert torch.equal(xs, torch.cat([b[0] for b in dls.valid]))
    assert ys.tolist() == z["y_test"].tolist()
    # normalised with the train set's own per-channel stats: train pixels have mean 0 / std 1 exactly
    tr = dls.train_ds.normalize(dls.train_ds.images.float() / 255)
    assert tr.mean((0, 2, 3)).abs().max() < 1e-3 and (tr.std((0, 2, 3)) - 1).abs().max() < 1e-3
    assert xs.mean((0, 2, 3)).abs().max() < 0.5 and (xs.std((0, 2, 3)) - 1).abs().max() < 0.5
    torch.testing.assert_close(denormalize(xs, dls), torch.from_numpy(z["x_test"]).float() / 255)
    # layout: documented attribute on both datasets (and through fastai's delegation on the loaders)
    lay = dls.valid.dataset.layout
    assert lay is dls.valid.layout and isinstance(lay, MosaicLayout) and len(lay) == 100
    assert np.array_equal(lay.labels, ys.numpy()) and len(dls.train_ds.layout) == 300
    item = lay[0]
    assert item["label"] == ys[0] and 1 <= len(item["distractors"]) <= 3
    assert all(d["label"] != item["label"] for d in item["distractors"])
    # train augmentation: a random shift within 2 px (zero padded), never a flip
    ds = dls.train_ds
    img = torch.nn.functional.pad(ds.images[7].float(), (2, 2, 2, 2))
    seen = set()
    for _ in range(12):
        aug = (denormalize(ds[7][0], dls) * 255).round()
        shifts = [(i, j) for i in range(5) for j in range(5) if torch.equal(aug, img[:, i:i + 32, j:j + 32])]
        assert shifts, "augmented image is not a padded crop of the original"
        seen.add(shifts[0])
    assert len(seen) > 1
    # subset keeps the first items and their layout rows
    sub = digit_mosaic(tmp_path, bs=8, subset=20, n_train=300, n_test=100, seed=0)
    assert len(sub.train_ds) == len(sub.valid_ds) == len(sub.valid_ds.layout) == 20
    assert np.array_equal(sub.valid_ds.layout.target_box, lay.target_box[:20])


@pytest.mark.trains  # fits a Learner (three epochs of 1,200 mosaics, a few seconds)
def test_mosaic_trains_with_a_plain_learner(mosaic_dir):
    from fastai.callback import schedule  # noqa: F401  (adds Learner.fit_one_cycle)
    from fastai.callback.progress import ProgressCallback  # noqa: F401  (adds Learner.no_bar)
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from torch import nn
    dls = get_dataloaders("digit_mosaic", mosaic_dir, bs=32, subset=1200, num_workers=0, device="cpu")

    def conv(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    torch.manual_seed(0)
    model = nn.Sequential(*conv(3, 16), nn.MaxPool2d(2), *conv(16, 32), nn.MaxPool2d(2), *conv(32, 64),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(3, 3e-3)
    # the large digit is learnt from the loader's batches: well above chance (10 %) on the 1,200 test mosaics
    top1 = learn.validate()[1]
    assert top1 > 0.25, f"accuracy {top1:.3f} on the test mosaics"


def test_digit_mosaic_default_cache_dir_name():
    # the default location, without writing there
    assert str(mosaics.mosaic_cache_path(os.path.expanduser("~/.cache/sddlib/digit_mosaic"), 8000, 2000, 0)).endswith(
        f"digit_mosaic/digit_mosaic_v{mosaics.MOSAIC_VERSION}_train8000_test2000_seed0.npz")
