"""pipeline="device_decode" for the image-file sets: workers read bytes, the device decodes and transforms.
On the CPU the same code runs with torchvision's CPU decoder (a GPU uses nvJPEG through the same call)."""
import numpy as np
import pytest
import torch
from PIL import Image

from fake_datasets import write_tiny_cub200, write_tiny_imagenet
from sddlib.config import ConfigError, RunConfig
from sddlib.data import get_dataloaders


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    return write_tiny_imagenet(tmp_path_factory.mktemp("imagenet"), n_classes=3, per_class=4, size=300)


def _batches(dl):
    xs, ys = zip(*list(dl))
    return torch.cat(xs), torch.cat(ys)


def test_test_batches_match_the_workers_pipeline(imagenet_dir):
    ref = get_dataloaders("imagenet", imagenet_dir, bs=5, num_workers=0, device="cpu")
    ours = get_dataloaders("imagenet", imagenet_dir, bs=5, num_workers=2, device="cpu", pipeline="device_decode")
    (x_ref, y_ref), (x, y) = _batches(ref.valid), _batches(ours.valid)
    assert x.shape == x_ref.shape == (12, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(y, y_ref)
    # Resize(256) + CenterCrop(224): PIL's and torch's antialiased bilinear resamplers round differently
    assert (x - x_ref).abs().mean() < 0.01 and (x - x_ref).abs().max() < 0.05


def _train_batches(dataset, data_dir, pipeline, seed, bs):
    """The training split of one epoch under torch seed `seed` (the crops and flips draw from it; the order is
    the loader's own seeded shuffle, the same in both pipelines)."""
    dls = get_dataloaders(dataset, data_dir, bs=bs, num_workers=0, device="cpu", pipeline=pipeline)
    torch.manual_seed(seed)
    return _batches(dls.train)


def _close_to_workers(x, x_ref):
    """Each image within the resamplers' rounding of the workers' (PIL) image: a wrong crop, flip or decode is
    off by far more."""
    assert x.shape == x_ref.shape
    per_image = (x - x_ref).abs().flatten(1)
    close = bool(per_image.mean(1).max() < 0.01 and per_image.max() < 0.05)
    assert close, f"mean / max differences from the workers' images: {per_image.mean(1)}, {per_image.amax(1)}"


def test_training_batches_are_augmented_on_the_device(imagenet_dir):
    # the device draws the workers' crops and flips (RandomResizedCrop + flip, the reference's) from the same
    # seed, a new draw under each seed; an evaluation transform, or one crop for every epoch, matches neither
    epochs = {}
    for seed in (0, 1):
        (x_ref, y_ref), (x, y) = (_train_batches("imagenet", imagenet_dir, p, seed, bs=4)
                                  for p in ("workers", "device_decode"))
        assert x.shape == (12, 3, 224, 224) and sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
        assert torch.equal(y, y_ref)
        _close_to_workers(x, x_ref)
        epochs[seed] = x
    assert torch.equal(_train_batches("imagenet", imagenet_dir, "device_decode", 0, bs=4)[0], epochs[0])  # seeded
    # the same images in the same order under both seeds: every one of them cropped differently
    assert ((epochs[0] - epochs[1]).abs().flatten(1).mean(1) > 0.1).all()


def test_files_the_jpeg_decoder_refuses_are_decoded_on_the_cpu(tmp_path):
    write_tiny_cub200(tmp_path, n_classes=2, per_class=4, size=260)
    dls = get_dataloaders("cub200", tmp_path, bs=2, num_workers=0, device="cpu", pipeline="device_decode")
    (png_train, _), (cmyk_train, _) = dls.train.dataset.samples[:2]
    (png_valid, _), (cmyk_valid, _) = dls.valid.dataset.samples[:2]
    for png in (png_train, png_valid):
        Image.open(png).convert("RGB").save(png, "PNG")                # a PNG named .jpg, as ImageNet has
    for cmyk in (cmyk_train, cmyk_valid):
        Image.open(cmyk).convert("CMYK").save(cmyk, "JPEG")            # and a CMYK JPEG
    from torchvision.io import decode_jpeg
    with pytest.raises(RuntimeError):                                   # the file the fallback is for
        decode_jpeg(torch.from_numpy(np.fromfile(png_train, dtype=np.uint8)))
    # every image of both splits, those files included, as PIL decodes it in the workers' pipeline
    train = [_train_batches("cub200", tmp_path, p, 0, bs=2) for p in ("workers", "device_decode")]
    valid = [_batches(get_dataloaders("cub200", tmp_path, bs=2, num_workers=0, device="cpu", pipeline=p).valid)
             for p in ("workers", "device_decode")]
    for (x_ref, y_ref), (x, y) in (train, valid):
        assert len(x) == 4 and torch.equal(y, y_ref)
        _close_to_workers(x, x_ref)


def test_device_decode_is_for_files_only():
    with pytest.raises(ConfigError, match="pipeline='device_decode' is not available for cifar100"):
        RunConfig.from_params({"dataset": "cifar100", "pipeline": "device_decode"})
    assert RunConfig.from_params({"dataset": "imagenet", "pipeline": "device_decode"}).data_pipeline == "device_decode"


def test_each_process_decodes_its_share_of_every_batch(imagenet_dir):
    from sddlib.distributed import Shard, ShardedDL
    dls = get_dataloaders("imagenet", imagenet_dir, bs=6, num_workers=0, device="cpu", pipeline="device_decode")
    parts = [ShardedDL(dls.valid, Shard(rank, 2, False)) for rank in (0, 1)]
    (x0, y0), (x1, y1) = (_batches(p) for p in parts)
    whole, labels = _batches(dls.valid)
    assert x0.shape == (6, 3, 224, 224) and torch.equal(torch.cat([y0[:3], y1[:3], y0[3:], y1[3:]]), labels)
    torch.testing.assert_close(torch.cat([x0[:3], x1[:3], x0[3:], x1[3:]]), whole)
