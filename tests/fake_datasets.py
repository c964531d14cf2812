"""Tiny datasets in the real on-disk formats, for tests (`from fake_datasets import ...`; named so it
does not shadow Hugging Face's `datasets` package on the test path).

The metadata carries the real class counts (100 CIFAR-100 fine names, 200 CUB `classes.txt`
entries) while only a few classes have images, so loaders report the real `num_classes`.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2").split()
assert len(CIFAR100_FINE) == 100 and len(CIFAR100_COARSE) == 20

CUB_FIRST_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
                     "004.Groove_billed_Ani", "005.Crested_Auklet"]
IMAGENET_FIRST_SYNSETS = [("n01440764", "tench, Tinca tinca"), ("n01443537", "goldfish, Carassius auratus"),
                          ("n01484850", "great white shark, white shark, man-eater, man-eating shark, "
                                        "Carcharodon carcharias"),
                          ("n01491361", "tiger shark, Galeocerdo cuvieri"), ("n01494475", "hammerhead, hammerhead shark")]


def write_tiny_cifar100(root, n_train=20, n_test=10, seed=0) -> Path:
    """`root/cifar-100-python/{train,test,meta}` pickled as torchvision's CIFAR100 reads them
    (dict with 'data' uint8 N x 3072 (R, G, B planes of 32 x 32), 'fine_labels', 'coarse_labels',
    'filenames', 'batch_label'; meta with 'fine_label_names', 'coarse_label_names')."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n).tolist()
        entry = {"filenames": [f"tiny_{name}_{i}.png" for i in range(n)], "batch_label": f"{name}ing batch 1 of 1",
                 "fine_labels": fine, "coarse_labels": [f % 20 for f in fine],
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": list(CIFAR100_FINE), "coarse_label_names": list(CIFAR100_COARSE)}, f)
    return folder


def _jpeg(path: Path, rng, w, h):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, 3)
    img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, "JPEG", quality=90)


def write_tiny_cub200(root, n_classes=3, per_class=4, size=64, seed=0) -> Path:
    """The official CUB-200-2011 tree under `root/CUB_200_2011/`: images/<NNN.Name>/<file>.jpg (real JPEGs,
    size x 3/4 size, landscape) for the first `n_classes` classes, and images.txt, train_test_split.txt
    (alternating 1/0 per class, so half of each class is train), image_class_labels.txt, and a 200-line
    classes.txt. Within a class, images.txt lists files in a non-sorted order, as the official file does."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "CUB_200_2011"
    classes = CUB_FIRST_CLASSES + [f"{i:03d}.Bird_Species_{i:03d}" for i in range(len(CUB_FIRST_CLASSES) + 1, 201)]
    assert n_classes <= 200
    images, split, labels = [], [], []
    for c in range(n_classes):
        stem = classes[c].split(".", 1)[1]
        files = [f"{stem}_{k:04d}_{int(rng.integers(1, 10**6))}.jpg" for k in range(per_class)]
        for k in rng.permutation(per_class):
            rel = f"{classes[c]}/{files[k]}"
            _jpeg(base / "images" / rel, rng, size, size * 3 // 4)
            i = len(images) + 1
            images.append(f"{i} {rel}")
            split.append(f"{i} {1 if k % 2 == 0 else 0}")
            labels.append(f"{i} {c + 1}")
    for name, lines in (("images.txt", images), ("train_test_split.txt", split), ("image_class_labels.txt", labels),
                        ("classes.txt", [f"{i + 1} {c}" for i, c in enumerate(classes)])):
        (base / name).write_text("\n".join(lines) + "\n")
    return base


def write_tiny_imagenet(root, n_classes=3, per_class=4, size=64, seed=0) -> Path:
    """`root/train/<wnid>/<wnid>_<k>.JPEG` and `root/val/<wnid>/ILSVRC2012_val_<id>.JPEG` (per_class
    each), plus `root/LOC_synset_mapping.txt` ("n01440764 tench, Tinca tinca" lines)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    synsets = IMAGENET_FIRST_SYNSETS + [(f"n9{i:07d}", f"synthetic class {i}, extra")
                                        for i in range(len(IMAGENET_FIRST_SYNSETS), n_classes)]
    synsets = synsets[:n_classes]
    val_id = 0
    for wnid, _ in synsets:
        for k in range(per_class):
            _jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", rng, size, size * 3 // 4)
            val_id += 1
            _jpeg(root / "val" / wnid / f"ILSVRC2012_val_{val_id:08d}.JPEG", rng, size * 3 // 4, size)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {names}\n" for w, names in synsets))
    return root


def write_tiny_folder(root, n_train=(24, 24), n_val=(3, 2), size=32, seed=0) -> Path:
    """dataset "folder" in its train/ + val/ layout: two classes ("cats", "dogs") of random PNG images, `n_train`
    and `n_val` images per class (48 and 5 by default: a test set that two processes split unevenly)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, counts in (("train", n_train), ("val", n_val)):
        for name, n in zip(("cats", "dogs"), counts):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def write_teacher_release(root, archs, num_classes, stem="cifar", seed=0) -> Path:
    """A folder of published teachers in the authors' release layout, `<root>/<arch>_vanilla/<arch>_best.pth`
    (`{"model": state_dict}` of freshly initialised models): what `teachers_dir` points at."""
    import torch

    from sddlib.models import create_model
    torch.manual_seed(seed)
    for arch in archs:
        folder = Path(root) / f"{arch}_vanilla"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"model": create_model(arch, num_classes=num_classes, stem=stem).state_dict()},
                   folder / f"{arch}_best.pth")
    return Path(root)
