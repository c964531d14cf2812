"""One tidy pandas DataFrame per figure (one row per observation, one column per variable), computed
from `RegionPredictions` or a training history. Each figure is drawn from its frame alone (the region
map also needs the images), and `save_run_figures` writes the frame as CSV beside the PNG.

Category ids and names follow `CATEGORIES` (the `RegionMasks` order): consistent_right (global and
region right), consistent_wrong (both wrong), complementary_gr_lw (global right, region wrong),
complementary_gw_lr (global wrong, region right). Student categories come from the student's own
predictions.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..regions import CATEGORIES, CATEGORY, COMPLEMENTARY, complementary
from .predictions import RegionPredictions, check_preds, check_scales, region_labels, scale_slices

__all__ = ["region_map_frame", "region_logits_frame", "category_shares_frame", "category_history_frame",
           "per_class_frame", "agreement_frame", "pick_images", "region_contents_frame", "COVERS"]

KINDS = ("global right, local wrong", "global wrong, local right", "consistent", "chosen")


def _positive_int(value, name, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive number of {what}, got {value!r}.")
    return int(value)


def _check_index(index, n, name="index") -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise ValueError(f"{name} must be an image position in [0, {n - 1}], got {index!r}.")
    return int(index) % n


# --------------------------------------------------------------------------------------------------
# figure 1: region map


def pick_images(cats: torch.Tensor, n: int) -> tuple[list[int], list[str]]:
    """Images with complementary regions of both kinds first (most first, alternating), one fully
    consistent image as contrast when n >= 4, then the rest in order."""
    gr_lw, gw_lr = ((cats == CATEGORY[c]).sum(1) for c in COMPLEMENTARY)
    order = lambda counts: [int(i) for i in torch.argsort(-counts, stable=True) if counts[i] > 0]  # noqa: E731
    a, b = order(gr_lw), order(gw_lr)
    plain = [i for i in range(len(cats)) if gr_lw[i] == 0 and gw_lr[i] == 0]
    picked, kinds = [], []
    reserve = 1 if n >= 4 and plain else 0
    while len(picked) < n - reserve and (a or b):
        for queue, kind in ((a, KINDS[0]), (b, KINDS[1])):
            while queue and queue[0] in picked:
                queue.pop(0)
            if queue and len(picked) < n - reserve:
                picked.append(queue.pop(0))
                kinds.append(kind)
    for i in plain:
        if len(picked) >= n:
            break
        picked.append(i)
        kinds.append(KINDS[2])
    return picked, kinds


def region_map_frame(preds: RegionPredictions, n: int = 6, *, indices=None) -> pd.DataFrame:
    """One row per (shown image, region): row (figure row), image (position in `preds`), kind (why it
    was shown), target, target_name, scale, cell_row, cell_col, category, top1, top1_name and prob (the
    teacher's top-1 class and its probability in that region)."""
    preds = check_preds(preds)
    cats = preds.categories()
    if indices is None:
        indices, kinds = pick_images(cats, min(_positive_int(n, "n", "images"), len(preds)))
    else:
        try:
            indices = [_check_index(i, len(preds), "each of indices") for i in indices]
        except TypeError:
            raise ValueError(f"indices must be a list of image positions, got {indices!r}.") from None
        if not indices:
            raise ValueError("indices must name at least one image.")
        kinds = [KINDS[3]] * len(indices)
    top_p, top1 = preds.teacher_regions.float().softmax(1).max(1)          # B x N
    cell = [(s, r, c) for s in preds.scales for r in range(s) for c in range(s)]
    names = preds.class_names
    rows = [dict(row=k, image=i, kind=kind, target=int(preds.targets[i]), target_name=names[int(preds.targets[i])],
                 scale=s, cell_row=r, cell_col=c, category=CATEGORIES[int(cats[i, j])], top1=int(top1[i, j]),
                 top1_name=names[int(top1[i, j])], prob=float(top_p[i, j]))
            for k, (i, kind) in enumerate(zip(indices, kinds)) for j, (s, r, c) in enumerate(cell)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# figure 2: region logits of one image


def _logit_columns(preds, index, k) -> list[int]:
    """The target, then the k other classes that are the teacher's top-1 in the most regions (ties
    and classes that are nobody's top-1: highest teacher logit over the regions)."""
    t = preds.teacher_regions[index].float()               # K x N
    target = int(preds.targets[index])
    wins = torch.bincount(t.argmax(0), minlength=t.shape[0]).float()
    score = wins * (t.abs().max() * 4 + 1) + t.max(1).values   # wins first, then the best logit
    score[target] = -float("inf")
    others = score.argsort(descending=True)[: min(k, t.shape[0] - 1)].tolist()
    return [target] + others


def region_logits_frame(preds: RegionPredictions, index=None, *, k: int = 5) -> pd.DataFrame:
    """For one image (default: the one with the most complementary teacher regions), one row per
    (model, region, shown class): image, target, target_name, model ("teacher"/"student"), region,
    region_label, category (the teacher's, of that region), column (position of the class: the
    target first, then the `k` classes that are the teacher's top-1 in the most regions), class,
    class_name, logit, is_top1 (the class is that model's top-1 in that region)."""
    preds = check_preds(preds)
    k = _positive_int(k, "k", "classes")
    cats = preds.categories()
    index = int(torch.argmax(complementary(cats).sum(1))) if index is None else _check_index(index, len(preds))
    cols = _logit_columns(preds, index, k)
    target, labels, names = int(preds.targets[index]), region_labels(preds.scales), preds.class_names
    models = [("teacher", preds.teacher_regions)]
    if preds.student_regions is not None:
        models.append(("student", preds.student_regions))
    rows = []
    for model, regions in models:
        logits = regions[index].float()                  # K x N
        top = logits.argmax(0).tolist()
        rows += [dict(image=index, target=target, target_name=names[target], model=model, region=n,
                      region_label=labels[n], category=CATEGORIES[int(cats[index, n])], column=j, **{"class": c},
                      class_name=names[c], logit=float(logits[c, n]), is_top1=top[n] == c)
                 for n in range(len(labels)) for j, c in enumerate(cols)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# figure 3: category shares (evaluation set, and per training epoch)


def category_shares_frame(preds: RegionPredictions) -> pd.DataFrame:
    """One row per (model, scale, category): count of (image, region) pairs and their share of the
    scale's pairs; the teacher's categories, and the student's own when it is there."""
    preds = check_preds(preds)
    who = {"teacher": preds.categories()}
    if preds.student_regions is not None:
        who["student"] = preds.student_categories()
    rows = []
    for model, cats in who.items():
        for s, sl in scale_slices(preds.scales).items():
            total = cats[:, sl].numel()
            rows += [dict(model=model, scale=s, category=c, count=int((cats[:, sl] == j).sum()),
                          share=int((cats[:, sl] == j).sum()) / max(total, 1)) for j, c in enumerate(CATEGORIES)]
    return pd.DataFrame(rows)


def history_rows(history) -> list[dict]:
    if isinstance(history, pd.DataFrame):
        return history.to_dict("records")
    if hasattr(history, "history") and not isinstance(history, (list, tuple)):
        history = history.history      # a DistillationCallback
    if not isinstance(history, (list, tuple)) or not all(isinstance(r, dict) for r in history):
        raise ValueError("history must be DistillationCallback.history (a list of per-epoch dicts) or "
                         f"its stats_frame(), got {type(history).__name__}.")
    return list(history)


def category_history_frame(history, scales) -> pd.DataFrame:
    """One row per (epoch, scale, category): the share of the teacher's regions in that category on
    the epoch's training batches, from `DistillationCallback.history` or `.stats_frame()`."""
    scales = check_scales(scales)
    rows = history_rows(history)
    if not rows:
        raise ValueError("history is empty; fit at least one epoch with a DistillationCallback first.")
    needed = ["epoch"] + [f"{c}@{s}" for s in scales for c in CATEGORIES]
    missing = [k for k in needed if any(k not in r for r in rows)]
    if missing:
        raise ValueError(f"history lacks {missing[:3]}{' ...' if len(missing) > 3 else ''}; pass the history "
                         f"of a DistillationCallback run with scales {list(scales)}.")
    return pd.DataFrame([dict(epoch=int(r["epoch"]), scale=s, category=c, share=float(r[f"{c}@{s}"]))
                         for r in rows for s in scales for c in CATEGORIES])


# --------------------------------------------------------------------------------------------------
# figure 4: classes with the most complementary regions


def per_class_frame(preds: RegionPredictions, *, top: int = 15) -> pd.DataFrame:
    """The `top` target classes whose test images have the most complementary teacher regions (all
    scales), most first: one row per (class, complementary category) with rank, class, class_name,
    category, regions (count over the class's images) and images (the class's test images)."""
    preds = check_preds(preds)
    top = _positive_int(top, "top", "classes")
    cats, K = preds.categories(), preds.num_classes
    counts = {c: torch.zeros(K, dtype=torch.long).index_add_(0, preds.targets, (cats == j).sum(1))
              for j, c in enumerate(CATEGORIES) if c in COMPLEMENTARY}
    images = torch.bincount(preds.targets, minlength=K)
    total = sum(counts.values())
    order = [int(c) for c in torch.argsort(-total, stable=True) if total[c] > 0][:top]
    return pd.DataFrame([dict(rank=rank, **{"class": c}, class_name=preds.class_names[c], category=cat,
                              regions=int(counts[cat][c]), images=int(images[c]))
                         for rank, c in enumerate(order) for cat in counts],
                        columns=["rank", "class", "class_name", "category", "regions", "images"])


# --------------------------------------------------------------------------------------------------
# figure 5: local agreement of student and teacher


def agreement_frame(preds_plain, preds_sd) -> pd.DataFrame:
    """How often the student's top-1 equals the teacher's, per region of the global (1x1) and the
    finest grid: one row per (student, scale, row, col) with agreement (a fraction of the images);
    student is "sd" and, when `preds_plain` is given (a plain M=[1] student on the same images and
    scales), "plain"; images is how many images the fractions are over; M the scales the regions were pooled at."""
    preds_sd = check_preds(preds_sd, "preds_sd", need_student=True)
    students = {}
    if preds_plain is not None:
        preds_plain = check_preds(preds_plain, "preds_plain", need_student=True)
        if preds_plain.scales != preds_sd.scales or preds_plain.teacher_regions.shape != preds_sd.teacher_regions.shape:
            raise ValueError(f"preds_plain {tuple(preds_plain.teacher_regions.shape)} at scales "
                             f"{list(preds_plain.scales)} and preds_sd {tuple(preds_sd.teacher_regions.shape)} at "
                             f"{list(preds_sd.scales)} differ; collect both on the same images and scales.")
        students["plain"] = preds_plain
    students["sd"] = preds_sd
    finest, scales = max(preds_sd.scales), "[" + ",".join(map(str, preds_sd.scales)) + "]"
    rows = []
    for name, preds in students.items():
        same = (preds.student_regions.argmax(1) == preds.teacher_regions.argmax(1)).float().mean(0)   # N
        for s, sl in scale_slices(preds.scales).items():
            if s in (1, finest):
                rows += [dict(student=name, scale=s, row=r, col=c, agreement=float(same[sl][r * s + c]),
                              images=len(preds), M=scales)
                         for r in range(s) for c in range(s)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# what the teacher's complementary regions cover (digit mosaics: the digits' boxes are known)

COVERS = ("target digit", "distractor digit", "background")
COVER_SHARE = 0.2   # a digit's box must cover this share of a cell for the cell to be "on" that digit


def _overlap(cell, box) -> float:
    x0, y0, x1, y1 = box
    w = max(0.0, min(cell[2], x1) - max(cell[0], x0))
    h = max(0.0, min(cell[3], y1) - max(cell[1], y0))
    return w * h


def region_contents_frame(preds: RegionPredictions) -> pd.DataFrame:
    """One row per complementary teacher region of a finer grid (scale > 1) of each image with a digit layout:
    image, scale, region, category, prob (the teacher's top-1 probability there) and covers: the digit whose box
    covers the largest share of the cell ("target digit" or "distractor digit"), or "background" when no box
    covers COVER_SHARE of it. Empty when `preds` has no layouts (data other than the digit mosaics)."""
    preds = check_preds(preds)
    columns = ["image", "scale", "region", "category", "prob", "covers"]
    if preds.layouts is None:
        return pd.DataFrame(columns=columns)
    cats = preds.categories()
    top_p = preds.teacher_regions.float().softmax(1).max(1).values
    H, W = preds.images.shape[-2:]
    cells = [(s, r, c) for s in preds.scales for r in range(s) for c in range(s)]
    rows = []
    for i, layout in enumerate(preds.layouts):
        boxes = [("target digit", layout.get("target_box"))] + [("distractor digit", d.get("box"))
                                                                for d in layout.get("distractors", [])]
        boxes = [(kind, box) for kind, box in boxes if box is not None and min(box) >= 0]
        for j, (s, r, c) in enumerate(cells):
            category = CATEGORIES[int(cats[i, j])]
            if s == 1 or category not in COMPLEMENTARY:
                continue
            cell = (c * W / s, r * H / s, (c + 1) * W / s, (r + 1) * H / s)
            area = (W / s) * (H / s)
            share, kind = max(((_overlap(cell, box) / area, kind) for kind, box in boxes), default=(0.0, None))
            rows.append(dict(image=i, scale=s, region=j, category=category, prob=float(top_p[i, j]),
                             covers=kind if share >= COVER_SHARE else "background"))
    return pd.DataFrame(rows, columns=columns)
