"""Every dataset described once: what the rest of sddlib asks about a dataset, in one `DatasetSpec` each.

The configuration reads its solver, default pair, stem and pipelines here; the run reads its loader and class
count; the memory planner its sizes; the departures its published teacher; the tables their titles and order;
the sweep its notebook. Adding a dataset is one `register_dataset(DatasetSpec(...))` call (see
docs/architecture.md); the facts the data decides (a folder's classes and sizes, a reduced CUB-200's classes)
are read from the data, never written down beside it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..validators import ConfigError
from .folder import image_folder, resolve_augment, scan_folder
from .mosaics import digit_mosaic
from .paper_datasets import cifar100, cub200, imagenet

__all__ = ["DatasetSpec", "DatasetLayoutError", "DATASETS", "register_dataset", "dataset_spec", "paper_datasets",
           "registering_modules"]


class DatasetLayoutError(ValueError):
    """A data folder that holds part of a dataset, or the wrong thing (one sentence: what, where, the fix)."""


def _always_there(data_dir) -> bool:
    return True


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset, as every part of sddlib sees it.

    name            the `dataset` parameter's value
    title           its name in tables and on the results page
    loader          `loader(data_dir, *, bs, subset, num_workers, seed, device, download, pipeline, **options)`
                    -> fastai DataLoaders with `.info` (a `DatasetInfo`)
    protocol        the solver as the authors ran it (epochs, batch_size, lr, lr_decay_stages, lr_decay_rate,
                    weight_decay, momentum); a teacher trained here takes it too, whatever the student
    pair            (teacher, student) when the run names none
    stem            the models' stem (`sddlib.models.list_models(stem)`)
    pipelines       the data pipelines it takes (`sddlib.data.build.PIPELINES`), 'auto' meaning the first:
                    ('device', 'workers') for tensors in memory, ('workers', 'device_decode') for JPEG files
    classes         the class count, or `classes(data_dir, val_fraction)` where the data decides (None: not
                    known before the data is there)
    sizes           (train images, test images, image side) as the loader yields them, or
                    `sizes(data_dir, val_fraction, image_size)` where the data decides: memory planning
    check_layout    `check_layout(data_dir)`: True when the data is there, False when it is absent and will be
                    downloaded into data_dir; raises `DatasetLayoutError` for a half-present or wrong layout
    published_teacher  where the published experiments' teachers came from ("published", "torchvision
                    weights", "trained here"); None: no published experiment to compare with (your own data)
    in_paper        one of the SDD paper's tables (its numbers are in sddlib/reference)
    notebook        the notebook a sweep runs for it (a file in notebooks/ or a path); None: pass --notebook
    sync_bn         BatchNorm over the global batch on several processes by default (as the authors ran it)
    options         the parameters only this dataset takes, with their input defaults (given to its loader)
    named_by_folder runs are filed under the data folder's own name rather than the dataset's
    small_images    images up to this side use `small_stem` and `small_pair` (0: never)
    hub_id          its Hugging Face Hub dataset id, named in an exported student's model card (None: the run's
                    data name)
    plain_rows      where its table's plain (M=[1]) rows come from, when not the SD configs run with M=[1]
    test_crop       how a test image is cropped, in timm's data-config terms: (crop_pct, crop_mode), or
                    `test_crop(augment, image_size)` where the run's recipe decides
    student_lr      the protocol's LR for the students that its authors trained at another rate, by name
    """
    name: str
    title: str
    loader: Callable
    protocol: dict
    pair: tuple
    stem: str
    pipelines: tuple
    classes: int | Callable
    sizes: tuple | Callable
    check_layout: Callable = _always_there
    published_teacher: str | None = None
    in_paper: bool = False
    notebook: str | None = None
    sync_bn: bool = False
    options: dict = field(default_factory=dict)
    named_by_folder: bool = False
    small_images: int = 0
    small_stem: str = "cifar"
    small_pair: tuple = ("resnet14", "resnet8")
    hub_id: str | None = None
    plain_rows: str | None = None
    test_crop: tuple | Callable = (1.0, "center")
    student_lr: dict = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        """The images are tensors in memory (they can live on the training device), not files."""
        return "device" in self.pipelines

    @property
    def holds_out(self) -> bool:
        """Its loader takes `tune_fraction` (`sddlib.data.build.hold_out`): a tuner can score runs without the test."""
        import inspect
        return "tune_fraction" in inspect.signature(self.loader).parameters

    @property
    def module(self) -> str:
        """The module the dataset's loader is defined in: another process imports it to know the dataset."""
        return self.loader.__module__

    def _small(self, image_size) -> bool:
        return bool(self.small_images) and image_size is not None and image_size <= self.small_images

    def stem_for(self, image_size=None) -> str:
        """The models' stem for images of this side (a folder of small images takes the CIFAR networks)."""
        return self.small_stem if self._small(image_size) else self.stem

    def pair_for(self, image_size=None) -> tuple:
        """The default (teacher, student) for images of this side."""
        return self.small_pair if self._small(image_size) else self.pair

    def lr_for(self, student: str) -> float:
        """The initial LR of a run of `student` under this dataset's protocol."""
        return self.student_lr.get(student, self.protocol["lr"])

    def check_pipeline(self, pipeline: str) -> None:
        """`pipeline` ('auto' or one of `pipelines`) can feed this dataset; else one sentence (ConfigError)."""
        if pipeline == "auto" or pipeline in self.pipelines:
            return
        why = ("its images are in memory, not JPEG files" if self.in_memory else
               "its images are files, decoded per image" + ("" if "device_decode" in self.pipelines else " in workers"))
        raise ConfigError(f"pipeline={pipeline!r} is not available for {self.name} ({why}); use "
                          f"{', '.join(map(repr, self.pipelines))} or 'auto'.")

    def num_classes(self, data_dir, val_fraction: float = 0.2) -> int | None:
        """The class count a model must predict, known without loading the data (None: not known yet)."""
        return self.classes(data_dir, val_fraction) if callable(self.classes) else self.classes

    def test_crop_for(self, augment=None, image_size=None) -> tuple:
        """(crop_pct, crop_mode) of a test image under the run's recipe (`augment`, `image_size`)."""
        return self.test_crop(augment, image_size) if callable(self.test_crop) else self.test_crop

    def image_sizes(self, data_dir, val_fraction: float = 0.2, image_size=None) -> tuple:
        """(train images, test images, image side) of the whole dataset, for memory planning."""
        return self.sizes(data_dir, val_fraction, image_size) if callable(self.sizes) else self.sizes


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make `spec.name` a dataset every part of sddlib knows (the `dataset` parameter accepts it from now on)."""
    DATASETS[spec.name] = spec
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset `name`; one sentence naming the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}.")
    return DATASETS[name]


def paper_datasets() -> tuple[str, ...]:
    """The datasets of the SDD paper's tables, in its order."""
    return tuple(name for name, spec in DATASETS.items() if spec.in_paper)


def registering_modules() -> list[str]:
    """Modules outside sddlib that define a registered dataset: a fresh process (the memory probe) imports them."""
    return sorted({spec.module for spec in DATASETS.values() if not spec.module.startswith("sddlib.")})


# --- layouts and counts the data decides ------------------------------------------------------------
def _archive_layout(data_dir, folder: str, needed: tuple) -> bool:
    """CIFAR-100 and CUB-200 are downloaded into an empty data_dir: only a half-present layout is an error."""
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetLayoutError(f"data_dir={str(data_dir)!r} is a file; give the folder that holds (or will hold) "
                                 f"{folder}/.")
    if not (root / folder).is_dir():
        return False
    missing = [n for n in needed if not (root / folder / n).exists()]
    if missing:
        raise DatasetLayoutError(f"data_dir={str(data_dir)!r} holds an incomplete {folder}/ (missing "
                                 f"{', '.join(missing)}); delete it to download it again or extract the archive "
                                 "there.")
    return True


def _cifar100_layout(data_dir) -> bool:
    return _archive_layout(data_dir, "cifar-100-python", ("train", "test", "meta"))


def _cub200_layout(data_dir) -> bool:
    return _archive_layout(data_dir, "CUB_200_2011", ("images", "images.txt", "train_test_split.txt",
                                                      "image_class_labels.txt", "classes.txt"))


def _imagenet_layout(data_dir) -> bool:
    root = Path(data_dir).expanduser()
    split = [root / s for s in ("train", "val")]
    if not all(d.is_dir() and any(c.is_dir() for c in d.iterdir()) for d in split):
        raise DatasetLayoutError(f"data_dir={str(data_dir)!r} does not hold ImageNet (expected train/<wnid>/ and "
                                 "val/<wnid>/ class folders); point data_dir at the ILSVRC-2012 folder.")
    return True


def _cub200_classes(data_dir, val_fraction=0.2) -> int:
    """The classes listed in classes.txt (a reduced CUB-200 has fewer); 200 before it is downloaded."""
    listed = Path(data_dir).expanduser() / "CUB_200_2011" / "classes.txt"
    if not listed.is_file():
        return 200
    return sum(1 for line in listed.read_text().splitlines() if line.strip())


def _imagenet_classes(data_dir, val_fraction=0.2) -> int | None:
    train = Path(data_dir).expanduser() / "train"
    return sum(1 for d in train.iterdir() if d.is_dir()) if train.is_dir() else None


def _folder_classes(data_dir, val_fraction=0.2) -> int:
    return len(scan_folder(data_dir, val_fraction).classes)


def _folder_sizes(data_dir, val_fraction=0.2, image_size=None) -> tuple:
    scan = scan_folder(data_dir, val_fraction)
    return len(scan.train), len(scan.valid), image_size or 224


def _folder_test_crop(augment, image_size) -> tuple:
    """The ImageNet recipe resizes a test image and crops its centre (224 of 256); the small-image ones keep it."""
    return (0.875, "center") if resolve_augment(augment, image_size) == "imagenet" else (1.0, "center")


_IN_MEMORY, _FILES = ("device", "workers"), ("workers", "device_decode")
_CIFAR_SOLVER = dict(epochs=240, batch_size=64, lr=0.05, lr_decay_stages=(150, 180, 210), lr_decay_rate=0.1,
                     weight_decay=5e-4, momentum=0.9)
# The authors' CIFAR-100 and CUB-200 configs train their ShuffleNet and MobileNet students at 0.01, every other at 0.05
# (sddlib/reference/experiments.yaml).
_LIGHT_STUDENTS_LR = {"ShuffleV1": 0.01, "ShuffleV2": 0.01, "MobileNetV2": 0.01}

register_dataset(DatasetSpec(
    "cifar100", "CIFAR-100", cifar100, _CIFAR_SOLVER, ("resnet32x4", "ShuffleV1"), "cifar", _IN_MEMORY,
    classes=100, sizes=(50_000, 10_000, 32), check_layout=_cifar100_layout, published_teacher="published",
    in_paper=True, notebook="cifar100.ipynb", hub_id="uoft-cs/cifar100", student_lr=_LIGHT_STUDENTS_LR))
register_dataset(DatasetSpec(
    # 512: the authors ran 2 processes x 256 with SyncBatchNorm (BN and each step over 512 images)
    "imagenet", "ImageNet", imagenet, dict(epochs=100, batch_size=512, lr=0.2, lr_decay_stages=(30, 60, 90),
                                           lr_decay_rate=0.1, weight_decay=1e-4, momentum=0.9),
    ("ResNet50", "MobileNetV1"), "torchvision", _FILES, classes=_imagenet_classes,
    sizes=(1_281_167, 50_000, 224), check_layout=_imagenet_layout, published_teacher="torchvision weights",
    in_paper=True, notebook="imagenet.ipynb", sync_bn=True, hub_id="ILSVRC/imagenet-1k", test_crop=(0.875, "center"),
    plain_rows="KD, DKD and NKD rows are the authors' plain configs "
               "(params/imagenet/<teacher>-<student>-<method>.yaml), not the SD configs run with M=[1]. The paper's "
               "table is ResNet-50 → MobileNetV1; ResNet-34 → ResNet-18 has no paper numbers."))
register_dataset(DatasetSpec(
    "cub200", "CUB-200", cub200, _CIFAR_SOLVER, ("resnet32x4", "ShuffleV1"), "cub", _FILES,
    classes=_cub200_classes, sizes=(5_994, 5_794, 224), check_layout=_cub200_layout, published_teacher="published",
    in_paper=True, notebook="cub200.ipynb", test_crop=(0.875, "squash"), student_lr=_LIGHT_STUDENTS_LR))
register_dataset(DatasetSpec(
    # the embedded demo data: no paper; a short schedule with the same shape (two decays near the end), its
    # teacher trained here under it (or the one sddlib ships, trained so)
    "digit_mosaic", "Digit mosaic", digit_mosaic, dict(epochs=8, batch_size=64, lr=0.05, lr_decay_stages=(5, 7),
                                                       lr_decay_rate=0.1, weight_decay=5e-4, momentum=0.9),
    ("resnet14", "resnet8"), "cifar", _IN_MEMORY, classes=10, sizes=(8_000, 2_000, 32),
    published_teacher="trained here", notebook="quickstart.ipynb"))
register_dataset(DatasetSpec(
    # your own folder of images: no paper; the CIFAR/CUB solver on a 30-epoch schedule of the same shape, the
    # CIFAR networks for images up to 64 px
    "folder", "Your images", image_folder, dict(epochs=30, batch_size=64, lr=0.05, lr_decay_stages=(20, 25),
                                                lr_decay_rate=0.1, weight_decay=5e-4, momentum=0.9),
    ("ResNet34", "ResNet18"), "torchvision", ("workers",), classes=_folder_classes, sizes=_folder_sizes,
    notebook="your_data.ipynb",
    options={"image_size": None, "augment": "auto", "normalize": "imagenet", "val_fraction": 0.2,
             "skip_bad_images": False},
    named_by_folder=True, small_images=64, test_crop=_folder_test_crop))
