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


def test_training_batches_are_augmented_on_the_device(imagenet_dir):
    dls = get_dataloaders("imagenet", imagenet_dir, bs=4, num_workers=0, device="cpu", pipeline="device_decode")
    torch.manual_seed(0)
    first, labels = _batches(dls.train)
    torch.manual_seed(1)
    second, _ = _batches(dls.train)
    assert first.shape == (12, 3, 224, 224) and sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert not torch.allclose(first, second)                      # new crops and flips each epoch
    dls_again = get_dataloaders("imagenet", imagenet_dir, bs=4, num_workers=0, device="cpu",
                                pipeline="device_decode")
    torch.manual_seed(0)
    assert torch.equal(_batches(dls_again.train)[0], first)       # seeded: the same batches again


def test_files_the_jpeg_decoder_refuses_are_decoded_on_the_cpu(tmp_path):
    root = write_tiny_cub200(tmp_path, n_classes=2, per_class=4, size=260)
    files = sorted((root / "images").rglob("*.jpg"))
    image = Image.open(files[0]).convert("RGB")
    image.save(files[0], "PNG")                                   # a PNG named .jpg, as ImageNet has
    Image.open(files[1]).convert("CMYK").save(files[1], "JPEG")   # and a CMYK JPEG
    dls = get_dataloaders("cub200", tmp_path, bs=2, num_workers=0, device="cpu", pipeline="device_decode")
    x, _ = _batches(dls.valid)
    assert x.shape[1:] == (3, 224, 224) and torch.isfinite(x).all()


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
