"""dataset "folder" (issue 20): any folder of class folders, both layouts, PNG/JPEG/grey files written here; every
refusal one sentence before any work; timm models from a local weights file; the your_data notebook through
papermill and the same experiment through `python -m sddlib`."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from executed import check_readable
from sddlib import experiment
from sddlib.__main__ import main as cli
from sddlib.config import ConfigError, RunConfig
from sddlib.data import ImageFolderError, get_dataloaders, image_folder, scan_folder
from sddlib.models import create_model
from sddlib.preflight import check_environment

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "owl")


def write_image(path: Path, rng, size=20, mode="RGB"):
    """A random picture; its format from the suffix (PNG, JPEG), grey with mode "L"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size + 4) if mode == "L" else (size, size + 4, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_folder(root: Path, layout="split", per_class=5, size=20, classes=CLASSES, seed=0) -> Path:
    """A tiny ImageFolder: `<class>/` folders ("split"), or train/ + val/ ("train/val"); PNG, JPEG and grey files."""
    rng = np.random.default_rng(seed)
    splits = {"split": [("", per_class)], "train/val": [("train", per_class), ("val", 2)]}[layout]
    for split, n in splits:
        for c in classes:
            for i in range(n):
                suffix = (".png", ".jpg", ".JPEG")[i % 3]
                write_image(root / split / c / f"{i}{suffix}", rng, size, mode="L" if i == 1 else "RGB")
    return root


def folder_params(root, **kw):
    return {"dataset": "folder", "data_dir": str(root), "image_size": 32, "teacher": "resnet8", "student": "resnet8",
            "num_workers": 0, **kw}


def refusal(params) -> str:
    with pytest.raises(ConfigError) as err:
        check_environment(RunConfig.from_params(params), teacher_needed=False)
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message   # one sentence
    return message


# --- the layouts ------------------------------------------------------------------------------------------
def test_split_layout_is_stratified_seeded_and_recorded(tmp_path):
    root = write_folder(tmp_path / "pets", per_class=5)
    scan = scan_folder(root, val_fraction=0.4)
    assert scan.layout == "split" and scan.classes == list(CLASSES)
    assert scan.counts == {"train": [3, 3, 3], "valid": [2, 2, 2]}               # each class split alike
    assert not {p for p, _ in scan.train} & {p for p, _ in scan.valid}
    assert scan_folder(root, val_fraction=0.4).valid == scan.valid              # the same split every time
    dls = image_folder(root, bs=4, num_workers=0, image_size=32, val_fraction=0.4, normalize="auto")
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 32, 32) and dls.info.class_names == CLASSES and dls.c == 3
    assert dls.folder["val_fraction"] == 0.4 and dls.folder["class_counts"]["valid"] == [2, 2, 2]
    assert dls.folder["normalize"] == "auto" and dls.folder["sample_images"] == 9
    assert dls.info.mean == pytest.approx(dls.folder["mean"]) and 0.3 < dls.info.mean[0] < 0.7   # random pixels


def test_train_val_layout_same_classes_both_sides(tmp_path):
    root = write_folder(tmp_path / "pets", layout="train/val", per_class=3)
    dls = get_dataloaders("folder", root, bs=2, num_workers=0, image_size=40, augment="imagenet")
    assert dls.folder["layout"] == "train/val" and dls.folder["class_counts"] == {"train": [3, 3, 3],
                                                                                 "valid": [2, 2, 2]}
    assert dls.info.mean == pytest.approx((0.485, 0.456, 0.406))                  # ImageNet's by default
    x, _ = dls.valid.one_batch()
    assert x.shape == (2, 3, 40, 40)
    (root / "val").rename(root / "test")                                        # test/ instead of val/
    assert scan_folder(root).layout == "train/test"


def test_the_recipes_at_the_image_size():
    from torchvision import transforms as T

    from sddlib.data.folder import folder_transforms
    train, test = folder_transforms(32, "crop")                                   # the digit mosaics' recipe
    crop = next(t for t in train if isinstance(t, T.RandomCrop))
    assert crop.padding == 2 and not any(isinstance(t, T.RandomHorizontalFlip) for t in train)
    train, _ = folder_transforms(32, "auto")                                      # small: CIFAR's
    assert next(t for t in train if isinstance(t, T.RandomCrop)).padding == 4
    train, test = folder_transforms(224, "auto")                                  # ImageNet's
    assert isinstance(train[0], T.RandomResizedCrop) and test[0].size == 256 and test[1].size == (224, 224)


# --- refusals: one sentence each, before any work ----------------------------------------------------------
def test_refusals_of_the_folder(tmp_path):
    assert "is not a folder" in refusal(folder_params(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png", np.random.default_rng(0))
    assert "has no class folders" in refusal(folder_params(tmp_path / "flat"))
    root = write_folder(tmp_path / "empty_class", per_class=3)
    (root / "zebra").mkdir()
    assert "zebra" in refusal(folder_params(root)) and "holds no images" in refusal(folder_params(root))
    root = write_folder(tmp_path / "mismatch", layout="train/val", per_class=2)
    write_folder(root / "val", classes=("emu",), per_class=1)
    message = refusal(folder_params(root))
    assert "different class folders" in message and "emu" in message
    root = write_folder(tmp_path / "one", classes=("cat",), per_class=3)
    assert "at least 2 classes" in refusal(folder_params(root))
    root = write_folder(tmp_path / "few", per_class=1)
    assert "too few to hold out" in refusal(folder_params(root))
    root = write_folder(tmp_path / "ok", per_class=3)
    message = refusal(folder_params(root, image_size=8))                         # resnet8 strides 4: a 2x2 map
    assert "image_size=8 is too small for teacher resnet8" in message and "4x4" in message
    check_environment(RunConfig.from_params(folder_params(root, image_size=8, M="[1]")), teacher_needed=False)
    # an M outside the paper's three needs its finest scale, not the authors' 4x4 grid: [1,3] on a 3x3 map runs,
    # [1,2,5] on a 4x4 map (resnet8 at 16 px) is refused, in words that name image_size
    check_environment(RunConfig.from_params(folder_params(root, image_size=12, M="[1,3]")))          # 3x3 map
    with pytest.raises(ConfigError, match=r"^M=\[1,2,5\] is finer than the 4x4 feature map of teacher resnet8 on "
                                          r"16x16 images: use scales no larger than 4 or a larger image_size\.$"):
        check_environment(RunConfig.from_params(folder_params(root, image_size=16, M="[1,2,5]")))
    message = refusal(folder_params(root, image_size=128, teacher="torchvision:mobilenet_v3_small",
                                    student="timm:test_resnet"))
    assert "cannot be scale-decoupled" in message and "mobilenet_v3_small" in message


def test_refusals_of_the_parameters(tmp_path):
    root = write_folder(tmp_path / "ok", per_class=3)
    for params, words in (({"dataset": "cifar100", "image_size": 32}, "applies to dataset 'folder' only"),
                          (folder_params(root, augment="mirror"), "augment 'mirror' is unknown"),
                          (folder_params(root, normalize="per_image"), "normalize 'per_image' is unknown"),
                          (folder_params(root, val_fraction=1.0), "val_fraction=1.0 is not accepted"),
                          (folder_params(root, pipeline="device_decode"), "not available for folder"),
                          (folder_params(root, teacher_pretrained=True), "needs a timm or torchvision model"),
                          (folder_params(root, student_weights_file="w.pth"), "student_pretrained is False"),
                          (folder_params(root, teacher="timm:no_such_net"), "timm has no model 'no_such_net'")):
        with pytest.raises(ConfigError, match=words):
            RunConfig.from_params(params)
    message = refusal(folder_params(root, teacher="timm:test_resnet", teacher_pretrained=True,
                                    teacher_weights_file=str(tmp_path / "nowhere.safetensors"), image_size=128,
                                    student="timm:test_resnet"))
    assert "teacher_weights_file=" in message and "is not a file" in message


def test_unreadable_image_stops_naming_it_or_is_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path / "pets", per_class=4)
    good = root / "dog" / "0.png"
    (root / "dog" / "broken.jpg").write_bytes(good.read_bytes()[:60])              # a truncated file
    (root / "owl" / "notes.png").write_text("not an image")                     # not an image at all
    with pytest.raises(ImageFolderError) as err:
        image_folder(root, num_workers=0, image_size=32)
    message = str(err.value)
    assert "broken.jpg" in message and "(and 1 more)" in message and "skip_bad_images=True" in message
    assert "\n" not in message
    dls = image_folder(root, num_workers=0, image_size=32, skip_bad_images=True)
    assert dls.folder["skipped_images"] == 2 and any("notes.png" in f for f in dls.folder["skipped_files"])
    assert len(dls.train.dataset) + len(dls.valid.dataset) == 12                  # the 12 good images only


# --- models: timm and torchvision by name, ImageNet weights from a local file --------------------------------
def test_timm_teacher_from_a_local_weights_file(tmp_path):
    from safetensors.torch import save_file
    import timm
    torch.manual_seed(1)
    imagenet = timm.create_model("test_resnet", num_classes=1000)                # stands in for downloaded weights
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet.state_dict().items()}, str(path))
    model = create_model("timm:test_resnet", num_classes=3, pretrained=True, weights_file=str(path))
    assert model.get_classifier().out_features == 3                            # a new head for the classes
    body = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())  # every other weight from the file
    with pytest.raises(ValueError, match="huggingface.co/timm/test_resnet"):       # which file to put where
        create_model("timm:test_resnet", num_classes=3, pretrained=True, weights_file=str(tmp_path / "no.pth"))
    tv = create_model("torchvision:mobilenet_v3_small", num_classes=3)
    assert tv.classifier[-1].out_features == 3


# --- the notebook and the command line ------------------------------------------------------------------------
@pytest.mark.slow
def test_your_data_notebook_and_the_cli(tmp_path):
    """The notebook on a folder of class folders (split here) with a pretrained timm teacher from a weights file
    the test writes; then the same kind of run from `python -m sddlib` on a train/val folder."""
    import papermill as pm
    from safetensors.torch import save_file
    import timm
    weights = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(weights))
    data, out = write_folder(tmp_path / "my_pets", per_class=4, size=96), tmp_path / "outputs"
    fast = dict(epochs=1, teacher_epochs=1, lr_decay_stages=[1], batch_size=4, progress=False, num_workers=0)
    output = tmp_path / "your_data.executed.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "your_data.ipynb"), str(output), cwd=str(REPO),
                        kernel_name="python3", progress_bar=False,
                        parameters=dict(data_dir=str(data), image_size=128, teacher="timm:test_resnet",
                                        teacher_pretrained=True, teacher_weights_file=str(weights),
                                        student="timm:test_efficientnet", output_dir=str(out), **fast))
    executed = json.loads(output.read_text())
    shown = json.dumps([c.get("outputs", []) for c in executed["cells"]], ensure_ascii=False)  # outputs only
    check_readable(executed)          # the sample grid (the reader's data check) and every figure as PNG, short text
    runs = {m["variant"]: m for m in map(lambda p: json.loads(p.read_text()), out.glob("my_pets/*/metrics.json"))}
    assert set(runs) == {"teacher", "alone", "kd", "sd_kd"}          # the teacher fine-tuned here, student alone, KD, SD-KD
    sd = runs["sd_kd"]
    assert sd["dataset"] == "my_pets" and sd["departures"] == {"experiment": ["your data", None]}
    assert sd["data"]["layout"] == "split" and sd["data"]["val_fraction"] == 0.2
    assert sd["teacher_source"]["source"] == "trained here" and sd["teacher_source"]["protocol"]["pretrained"]
    assert (out / "teachers" / "my_pets" / "timm_test_resnet.pth").is_file()      # cached like other teachers
    assert shown.count("image/png") >= 2 and "owl" in shown                      # the sample grid, class counts
    assert "SD-KD" in shown and "teacher timm:test_resnet (trained here): top-1" in shown   # the table, the teacher
    assert (out / "my_pets" / sd["run_name"] / "figures").is_dir()
    tables = out / "tables"                                  # its two tables, as the other notebooks write theirs
    assert "SD-KD" in (tables / "your_data-my_pets.md").read_text()
    assert len(pd.read_csv(tables / "your_data-my_pets.csv")) >= 3                   # alone, KD, SD-KD
    assert {p.name for p in tables.glob("your_data-my_pets-sd-gains.*")} == {"your_data-my_pets-sd-gains.csv",
                                                                             "your_data-my_pets-sd-gains.md"}
    assert (tables / "your_data-my_pets-learning-curves.png").is_file()
    assert "SD-KD − KD, last epoch: " in shown and "Explore this SD run" in shown     # the lead, the next step

    data = write_folder(tmp_path / "shelter", layout="train/val", per_class=3)
    params = tmp_path / "my.yaml"
    params.write_text((REPO / "params" / "your_data.yaml").read_text())
    args = ["-f", str(params), "-p", "data_dir", str(data), "-p", "output_dir", str(out), "-p", "image_size", "32",
            "-p", "teacher", "resnet8", "-p", "student", "resnet8", "-p", "teacher_pretrained", "false",
            "-p", "student_pretrained", "false", "-p", "figures", "false"]
    args += [a for k, v in fast.items() for a in ("-p", k, json.dumps(v))]
    assert cli(args) == 0
    metrics = experiment.load_metrics(next(out.glob("shelter/resnet8-resnet8-*/metrics.json")))
    assert metrics["data"]["layout"] == "train/val" and metrics["params"]["dataset"] == "folder"


def test_the_sweep_runs_a_folder_params_file_through_the_your_data_notebook(tmp_path):
    from sddlib import sweep
    root = write_folder(tmp_path / "birds", per_class=3)
    job = sweep.plan(REPO / "params" / "your_data.yaml", {"data_dir": str(root), "output_dir": str(tmp_path)})
    assert Path(job["notebook"]) == REPO / "notebooks" / "your_data.ipynb"
    assert Path(job["out"]).parent == tmp_path / "birds" / "timm_resnet50-timm_resnet18-sd_kd-M124-seed0"
