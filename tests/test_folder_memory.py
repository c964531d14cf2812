"""A folder in memory (issue 29): the in-memory and file paths give the same classes, splits, normalisation and
sample figures; the small-image recipes cut the same pixels as the per-image path for the same draws; the memory
decision (fits, does not fit, forced either way) in one sentence naming the budget and the parameter; a bad image
still refused before training, naming it; the footprint known before a run starts. Tiny folders written here."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from sddlib.config import ConfigError, RunConfig
from sddlib.data import ImageFolderError, image_folder
from sddlib.data.build import ImageListDataset, TensorImageDataset, VariableSizeImages
from sddlib.data.device import DeviceImageDL, DeviceResizedCropDL, crop_flip
from sddlib.data.memory import MemoryBudgetError, folder_bytes, plan_memory, resized_size

CLASSES = ("ant", "bee", "fly")
GIB = 2**30


def write_folder(root: Path, per_class=5, seed=0, shapes=((30, 40), (41, 29), (25, 25)), learnable=False) -> Path:
    """`<class>/` folders of PNG and JPEG pictures of several shapes (height, width), one grey. Noise; with
    `learnable` each class has its own brightness (uniform in 0-79, 88-167 or 176-255), a signal a Learner finds."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(CLASSES):
        for i in range(per_class):
            h, w = shapes[i % len(shapes)]
            path = root / c / f"{i}{('.png', '.jpg')[i % 2]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            low, high = (0, 256) if not learnable else (k * 88, k * 88 + 80)
            pixels = rng.integers(low, high, (h, w) if i == 1 else (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels, "L" if i == 1 else "RGB").save(path)
    return root


def load(root, in_memory, **kw):
    options = dict(bs=4, num_workers=0, image_size=16, normalize="auto", device="cpu", in_memory=in_memory)
    return image_folder(root, **{**options, **kw})


def valid_pixels(dls):
    return torch.cat([x for x, _ in dls.valid])


@pytest.mark.parametrize("augment,image_size", [("cifar", 16), ("crop", 16), ("imagenet", 24)])
def test_memory_and_files_give_the_same_data(tmp_path, augment, image_size):
    from sddlib import viz
    root = write_folder(tmp_path / "bugs")
    memory = load(root, True, augment=augment, image_size=image_size)
    files = load(root, False, augment=augment, image_size=image_size)
    assert memory.folder["pipeline"] == "device" and files.folder["pipeline"] == "workers"
    assert isinstance(files.train.dataset, ImageListDataset)
    assert isinstance(memory.train.dataset, VariableSizeImages if augment == "imagenet" else TensorImageDataset)
    assert memory.info == files.info                                    # classes, normalisation, size
    same = ("layout", "classes", "class_counts", "mean", "std", "sample_images", "augment", "skipped_images")
    assert {k: memory.folder[k] for k in same} == {k: files.folder[k] for k in same}
    for split in ("train", "valid"):                                   # the same images in the same order
        dl_m, dl_f = getattr(memory, split), getattr(files, split)
        assert list(dl_m.dataset.targets.tolist()) == list(dl_f.dataset.targets)
    assert torch.equal(valid_pixels(memory), valid_pixels(files))      # eval pixels exactly the files' ones
    for i in range(len(files.valid.dataset)):                          # what plot_samples draws, item by item
        assert torch.equal(memory.valid.dataset[i][0], files.valid.dataset[i][0])
    assert viz.class_counts(memory).equals(viz.class_counts(files))
    x, y = memory.one_batch()
    assert x.shape == (4, 3, image_size, image_size) and x.dtype == torch.float32 and y.dtype == torch.long


def test_small_images_cut_the_per_image_paths_pixels_for_the_same_draws(tmp_path):
    root = write_folder(tmp_path / "bugs")
    memory = load(root, True, augment="cifar", normalize="imagenet")
    files = load(root, False, augment="cifar", normalize="imagenet")
    assert (memory.train.padding, memory.train.flip) == (2, True)     # 16 px: pad 16 // 8, flip
    square = T.Compose([T.Resize(16), T.CenterCrop(16)])               # the per-image path's first steps
    kept = memory.train.dataset.images
    offsets = torch.tensor([[0, 4], [3, 1], [4, 4], [2, 0]])
    flips = torch.tensor([True, False, False, True])
    ours = crop_flip(kept[:4], offsets, flips, 2)
    for k, ((path, _), (top, left), flip) in enumerate(zip(files.train.dataset.samples, offsets.tolist(),
                                                               flips.tolist())):
        img = square(Image.open(path).convert("RGB"))
        assert torch.equal(kept[k], TF.pil_to_tensor(img))             # kept = the square the workers crop from
        want = TF.crop(TF.pad(img, [2]), top, left, 16, 16)            # RandomCrop(16, padding=2) at this offset
        want = TF.hflip(want) if flip else want                        # then the flip
        assert torch.equal(ours[k], TF.pil_to_tensor(want))
    crop = load(root, True, augment="crop", normalize="imagenet")
    assert (crop.train.padding, crop.train.flip) == (1, False)        # 16 // 16, no flip: the mosaics' recipe


def test_imagenet_recipe_keeps_the_aspect_ratio_at_the_eval_short_side(tmp_path):
    root = write_folder(tmp_path / "bugs")
    memory = load(root, True, augment="imagenet", image_size=24, normalize="imagenet")
    ds = memory.train.dataset
    assert memory.folder["kept_side"] == round(24 / 0.875) == 27
    samples = load(root, False, augment="imagenet", image_size=24).train.dataset.samples
    headers = [Image.open(p).size for p, _ in samples]
    assert ds.images.shape[2:] == (27, max(max(resized_size(w, h, 27)) for w, h in headers))
    for i, (path, _) in enumerate(samples):
        w, h = headers[i]
        assert tuple(ds.sizes[i].tolist()) == resized_size(w, h, 27) and bool(ds.transposed[i]) == (h > w)
        want = TF.pil_to_tensor(T.Resize(27)(Image.open(path).convert("RGB")))
        assert torch.equal(ds.image(i), want)                          # the eval resize, kept whole
    assert memory.folder["memory"]["footprint_bytes"] == folder_bytes(headers, len(memory.valid.dataset), 24,
                                                                      "imagenet")
    assert isinstance(memory.train, DeviceResizedCropDL)
    seen = torch.cat([y for _, y in memory.train])
    assert sorted(seen.tolist()) == sorted(ds.targets.tolist())        # every image once per epoch


def test_a_panorama_keeps_the_centre_of_its_long_side(tmp_path):
    root = write_folder(tmp_path / "wide", per_class=2, shapes=((20, 90), (30, 30)))
    memory = load(root, True, augment="imagenet", image_size=24, normalize="imagenet")
    ds = memory.train.dataset
    assert ds.images.shape[2:] == (27, 54)                             # at most 2:1
    wide = [i for i in range(len(ds)) if ds.sizes[i].tolist() == [27, 54]]
    assert wide
    kept = memory.train.dataset
    files = load(root, False, augment="imagenet", image_size=24).train.dataset.samples
    for i in wide:
        whole = TF.pil_to_tensor(T.Resize(27)(Image.open(files[i][0]).convert("RGB")))   # 27 x 121
        left = (whole.shape[2] - 54) // 2
        assert torch.equal(kept.image(i), whole[:, :, left:left + 54])


# --- the decision: fits, does not fit, forced -----------------------------------------------------------------
def test_the_decision_in_one_sentence():
    fits = plan_memory("auto", 0.5, GIB, {"host": 4 * GIB})
    assert fits.in_memory and "within memory_budget=0.5" in fits.reason and "4.00 GiB of host memory" in fits.reason
    over = plan_memory("auto", 0.5, 3 * GIB, {"host": 4 * GIB})
    assert not over.in_memory and over.budget_bytes == 2 * GIB
    assert "3.00 GiB, more than memory_budget=0.5" in over.reason and "in_memory='auto'" in over.reason
    tight = plan_memory("auto", 0.5, 3 * GIB, {"host": 64 * GIB, "cuda:0": 4 * GIB})   # the GPU is the bound
    assert not tight.in_memory and "cuda:0 memory" in tight.reason
    with pytest.raises(MemoryBudgetError) as err:
        plan_memory(True, 0.5, 3 * GIB, {"host": 4 * GIB})
    message = str(err.value)
    assert "in_memory=True" in message and "memory_budget=0.5" in message and "\n" not in message
    assert message.endswith(".")
    assert plan_memory(True, 0.5, GIB, {"host": 4 * GIB}).in_memory
    never = plan_memory(False, 0.5, 1, {"host": 4 * GIB})
    assert not never.in_memory and "in_memory=False" in never.reason


def test_a_folder_over_its_budget_reads_its_files_or_is_refused_before_decoding(tmp_path, capsys):
    root = write_folder(tmp_path / "bugs")
    files = load(root, "auto", memory_budget=1e-12)                    # a budget no folder fits
    assert files.folder["pipeline"] == "workers" and not files.folder["memory"]["in_memory"]
    assert "more than memory_budget=1e-12" in files.folder["memory"]["reason"]
    assert capsys.readouterr().out.count("data: from the files: the decoded images would take") == 1  # said once
    (root / "ant" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(MemoryBudgetError, match="in_memory=True but"):  # before any image is decoded
        load(root, True, memory_budget=1e-12)
    memory = load(root, "auto", skip_bad_images=True)                  # fits by default: in memory
    assert memory.folder["pipeline"] == "device" and memory.folder["memory"]["in_memory"]
    assert memory.folder["decode_s"] >= 0 and memory.folder["decode_threads"] >= 1


def test_a_long_folder_shows_a_progress_bar(tmp_path, monkeypatch, capsys):
    from sddlib.data import memory
    monkeypatch.setattr(memory, "PROGRESS_FROM", 10)                 # 15 images: "long"
    dls = load(write_folder(tmp_path / "bugs"), True)
    assert dls.folder["pipeline"] == "device" and "decoding" in capsys.readouterr().out


def test_a_bad_image_is_refused_before_training_naming_it(tmp_path):
    root = write_folder(tmp_path / "bugs", per_class=4)
    good = root / "bee" / "0.png"
    (root / "bee" / "cut.jpg").write_bytes(good.read_bytes()[:50])
    for augment in ("cifar", "imagenet"):
        with pytest.raises(ImageFolderError) as err:
            load(root, True, augment=augment)
        assert "cut.jpg" in str(err.value) and "skip_bad_images=True" in str(err.value)
    for augment in ("cifar", "imagenet"):                               # skipped: counted, the rest in memory
        dls = load(root, True, augment=augment, skip_bad_images=True, image_size=24)
        assert dls.folder["skipped_images"] == 1 and len(dls.train.dataset) + len(dls.valid.dataset) == 12
        assert torch.cat([y for _, y in dls.train]).numel() == len(dls.train.dataset)


def test_subset_and_shards_in_memory(tmp_path):
    from sddlib.distributed import Shard
    root = write_folder(tmp_path / "bugs", per_class=6)
    for augment in ("cifar", "imagenet"):
        memory = load(root, True, augment=augment, subset=5, image_size=24)
        files = load(root, False, augment=augment, subset=5, image_size=24)
        assert memory.train.dataset.targets.tolist() == list(files.train.dataset.targets)
        assert torch.equal(valid_pixels(memory), valid_pixels(files))
        halves = [memory.train.new(shard=Shard(r, 2, True)) for r in range(2)]
        assert type(halves[0]) is type(memory.train) and all(len(list(h)) == len(halves[0]) for h in halves)
        assert sum(len(y) for h in halves for _, y in h) == 6              # 5 images padded to 6 for 2 processes


# --- the run parameters and the plan before a run ---------------------------------------------------------------
def test_the_run_parameters(tmp_path):
    from sddlib.run_memory import folder_footprint
    root = write_folder(tmp_path / "bugs")
    params = {"dataset": "folder", "data_dir": str(root), "image_size": 16, "teacher": "resnet8",
              "student": "resnet8"}
    cfg = RunConfig.from_params(params)
    assert cfg.memory_options == {"in_memory": "auto", "memory_budget": 0.5}
    assert "in_memory" not in cfg.fingerprint and "memory_budget" not in cfg.fingerprint   # earlier runs stay valid
    assert "in_memory" not in cfg.teacher_protocol and "memory_budget" not in cfg.teacher_protocol
    assert RunConfig.from_params({**params, "in_memory": "false"}).in_memory is False      # -p in_memory false
    assert RunConfig.from_params({**params, "in_memory": False}).fingerprint["in_memory"] is False
    assert "memory_budget" not in RunConfig.from_params({**params, "memory_budget": 0.2}).fingerprint
    for bad, words in (({**params, "in_memory": "yes"}, "in_memory='yes' is not accepted"),
                       ({**params, "memory_budget": 1.5}, "memory_budget=1.5 is not accepted"),
                       ({"dataset": "cifar100", "in_memory": False}, "applies to dataset 'folder' only")):
        with pytest.raises(ConfigError, match=words):
            RunConfig.from_params(bad)
    assert folder_footprint(params) == 15 * 3 * 16 * 16                 # every image at 16 x 16
    assert folder_footprint({**params, "in_memory": False}) == 0        # the run reads its files
    assert folder_footprint({**params, "memory_budget": 1e-12}) == 0    # auto over the budget: files
    with pytest.raises(MemoryBudgetError, match="memory_budget=1e-12"):
        folder_footprint({**params, "in_memory": True, "memory_budget": 1e-12})


@pytest.mark.trains
def test_device_loaders_for_the_in_memory_sets_train_a_learner(tmp_path):
    from fastai.learner import Learner
    from torch import nn
    from fastai.metrics import accuracy
    root = write_folder(tmp_path / "bugs", per_class=20, learnable=True)
    for augment, loader in (("cifar", DeviceImageDL), ("imagenet", DeviceResizedCropDL)):
        dls = load(root, True, augment=augment, image_size=24, bs=8)
        assert type(dls.train) is loader and len(dls.valid_ds) == 12
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), metrics=accuracy)
        with learn.no_logging():
            learn.fit(4, 1e-2)
        # the brightness of a class is learnt from the device batches: far above chance (1/3) on the held-out images
        top1 = learn.validate()[1]
        assert top1 >= 0.9, f"{augment}: accuracy {top1:.2f} on the held-out images"


@pytest.mark.slow  # trains two steps in a measuring subprocess
def test_a_sweeps_memory_plan_runs_folder_runs_and_refuses_one_over_its_budget(tmp_path):
    from sddlib.run_memory import check_jobs_fit
    root = write_folder(tmp_path / "bugs")
    params = {"dataset": "folder", "data_dir": str(root), "image_size": 16, "teacher": "resnet8",
              "student": "resnet8", "M": "[1]", "batch_size": 4, "device": "cpu"}
    assert "memory: 2 jobs" in check_jobs_fit([params, {**params, "seed": 1}], 2)
    with pytest.raises(RuntimeError, match="in_memory=True but the decoded images would take .* memory_budget=1e-12"):
        check_jobs_fit([{**params, "in_memory": True, "memory_budget": 1e-12}], 1)
