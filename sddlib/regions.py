"""Scale-decoupled region logits: pool the final feature map at several scales and score every pooled
region with the model's own head, exactly as the model scores its globally pooled features.

Region order is fixed across the library: scales ascending, row-major within a scale, so region 0
is the global (1x1) one. M is any increasing list of grid sizes from 1. For the paper's three ([1],
[1,2], [1,2,4]), as in the authors' SPP, the 4x4 grid is pooled from the feature map and every
coarser grid (2x2, 1x1) from that 4x4 grid (pool of pool); this matters when the map size is not a
multiple of 4 (7x7 maps on 224px inputs, 14x14, ...). Any other M ([1,3], [1,2,4,7], ...) pools each
scale straight from the map, and refuses a scale larger than the map's side.

Which models can be decoupled (see `ScaleDecoupled`): any model with timm's interface whose
`forward_features` returns a spatial map (B x C x H x W, or B x H x W x C as in Swin) or a token
sequence (B x T x C: ViT, DeiT and hybrids, whose leading `num_prefix_tokens` class/distillation/
register tokens are left out of the grid), and whose head average-pools (or, for transformers,
reads the class token) before anything else; torchvision's ResNet and MobileNetV2. Any other model
is refused with one sentence saying why and what would make it work.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PAPER_SCALES", "parse_scales", "num_regions", "region_scales", "pool_regions", "check_grid",
           "feature_grid", "scales_tag",
           "model_num_classes", "ScaleDecoupled", "CATEGORIES", "CATEGORY", "COMPLEMENTARY", "COMPLEMENTARY_WEIGHT",
           "complementary"]

# The four teacher-defined region categories, in `losses.RegionMasks` order (their ids in saved predictions):
# whether the teacher is right globally and in the region. Complementary regions (one right, the other wrong) weigh
# COMPLEMENTARY_WEIGHT in the SD loss (the authors' value), consistent ones 1.
CATEGORIES = ("consistent_right", "consistent_wrong", "complementary_gr_lw", "complementary_gw_lr")
CATEGORY = {name: i for i, name in enumerate(CATEGORIES)}
COMPLEMENTARY = ("complementary_gr_lw", "complementary_gw_lr")
COMPLEMENTARY_WEIGHT = 2.0


def complementary(categories):
    """Where an array of category ids (numpy or torch) holds a complementary region."""
    return (categories == CATEGORY[COMPLEMENTARY[0]]) | (categories == CATEGORY[COMPLEMENTARY[1]])


# The scale sets of the paper (M in its notation); [1] is the plain, non-decoupled method. Any other increasing
# list from 1 is accepted too, pooled otherwise (`pool_regions`) and recorded as a departure.
PAPER_SCALES = ((1,), (1, 2), (1, 2, 4))
_ACCEPTED = ("an increasing list of grid sizes starting at 1, e.g. [1], [1,2,4] or [1,2,4,7] (a list or tuple "
             "of ints, or that text)")
# The grid the authors pool from the feature map; every coarser scale is pooled from it.
_FINEST = 4
# Head pooling types that are a mean over the map (timm names), and the class-token read-out.
_AVERAGE_POOLS = ("avg", "fast", "fastavg", "avgfast")
_TOKEN_POOL = "token"


def parse_scales(scales) -> tuple[int, ...]:
    """Normalise a user's M (`(1, 2, 4)`, `[1, 2]` or the text `"[1,2,4]"`) to a tuple of ints."""
    value = scales
    if isinstance(scales, str):
        text = scales.replace(" ", "")
        if not re.fullmatch(r"\[\d+(,\d+)*\]", text):
            raise ValueError(f"scales {scales!r} is not understood; use {_ACCEPTED}.")
        value = tuple(int(s) for s in text[1:-1].split(","))
    elif isinstance(scales, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool)
                                                   for s in scales):
        value = tuple(scales)
    else:
        raise ValueError(f"scales {scales!r} is not understood; use {_ACCEPTED}.")
    if not value or value[0] != 1 or any(b <= a for a, b in zip(value, value[1:])):
        raise ValueError(f"scales {scales!r} is not supported; use {_ACCEPTED}.")
    return value


def check_grid(scales, grid_size) -> None:
    """Refuse an M outside the paper's three with a scale larger than the H x W grid it is pooled from: its
    cells would repeat the map's positions rather than part them."""
    scales, side = parse_scales(scales), min(grid_size)
    if scales not in PAPER_SCALES and scales[-1] > side:
        raise ValueError(f"M={_text(scales)} asks for a {scales[-1]}x{scales[-1]} grid, but the feature map is "
                         f"{grid_size[0]}x{grid_size[1]}; use scales no larger than {side}, or larger images.")


def _text(scales) -> str:
    return "[" + ",".join(map(str, scales)) + "]"


def scales_tag(scales) -> str:
    """M as a run folder names it: the digits run together while every scale is one digit (`124`, `1247`, as
    the folders of earlier runs are named), joined by `_` once one has two (`1_2_12`, never read as 1, 21, 2)."""
    scales = parse_scales(scales)
    return ("" if scales[-1] < 10 else "_").join(map(str, scales))


def num_regions(scales) -> int:
    """N = sum of s^2 over the scales: 21 for [1,2,4]."""
    return sum(s * s for s in parse_scales(scales))


def region_scales(scales) -> list[int]:
    """The scale each region index belongs to, e.g. [1, 2, 2, 2, 2] for (1, 2)."""
    return [s for s in parse_scales(scales) for _ in range(s * s)]


def pool_regions(feature_map: torch.Tensor, scales) -> torch.Tensor:
    """Pool a B x C x H x W map into B x C x N region vectors in the library's region order.

    The authors' rule for the paper's M: the 4x4 grid is pooled from the map and each requested scale
    from that 4x4 grid. So M=[1] gives the mean of the 4x4 pool (the global mean when H and W are
    multiples of 4) and M=[1,2] gives 2x2 cells of the 4x4 pool (not a direct 2x2 pooling, whose
    bins overlap differently on a 7x7 map). On a map smaller than 4x4 (MobileNetV2 on CIFAR: 2x2) the
    4x4 grid repeats the map's cells, as in the authors' runs.

    Any other M pools every scale s straight from the map by adaptive average pooling: cell (i, j) is the
    mean of rows floor(i*H/s) .. ceil((i+1)*H/s)-1 and the same for columns, so a scale that divides the
    map gives disjoint equal cells, and one that does not (3 on 8x8) gives cells that share their border
    row or column. A scale larger than the map is refused (`check_grid`).

    The plain method (M=[1]) of `sddlib.distill` distils the models' own logits, not region 0, so
    its training numbers do not depend on this rule; with M=[1] region 0 only feeds the teacher's
    region statistics. The two agree whenever the map is a multiple of 4 (every CIFAR-100 model).
    """
    scales = parse_scales(scales)
    if feature_map.dim() != 4:
        raise ValueError(f"expected a B x C x H x W feature map, got shape {tuple(feature_map.shape)}.")
    if scales in PAPER_SCALES:
        grid = F.adaptive_avg_pool2d(feature_map, _FINEST)
        pooled = [grid if s == _FINEST else F.adaptive_avg_pool2d(grid, s) for s in scales]
    else:
        check_grid(scales, feature_map.shape[-2:])
        pooled = [F.adaptive_avg_pool2d(feature_map, s) for s in scales]
    return torch.cat([p.flatten(2) for p in pooled], dim=2)


# --- how a model's features and head are reached ------------------------------------------------

def _torchvision_parts(model: nn.Module):
    """Feature extractor and head of torchvision classifiers, which lack timm's interface: the head
    is everything torchvision's own forward applies after the feature map."""
    from torchvision.models import MobileNetV2, ResNet

    if isinstance(model, ResNet):
        def features(x):
            m = model
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            return m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return features, lambda fmap: model.fc(torch.flatten(model.avgpool(fmap), 1))
    if isinstance(model, MobileNetV2):
        return model.features, lambda fmap: model.classifier(torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1))
    return None


def _model_parts(model: nn.Module) -> tuple[Callable, Callable]:
    """(forward_features, forward_head) of a timm-interface or torchvision model."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_features, model.forward_head
    parts = _torchvision_parts(model)
    if parts is None:
        raise TypeError(
            f"{type(model).__name__} has no forward_features()/forward_head() (the timm interface) "
            "and is not a torchvision ResNet or MobileNetV2; add those two methods to wrap it.")
    return parts


def model_num_classes(model: nn.Module) -> int | None:
    """How many classes `model` predicts (timm's `num_classes`, else its last linear layer), or None."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    head = model.get_classifier() if hasattr(model, "get_classifier") else (
        getattr(model, "fc", None) or getattr(model, "classifier", None))
    heads = head if isinstance(head, (tuple, list)) else [head]
    linears = [m for h in heads if isinstance(h, nn.Module) for m in h.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _pool_type(model: nn.Module) -> str:
    """timm's global pooling type of the head (`global_pool` on the model or its head); models
    without one (this repo's, torchvision's) average-pool."""
    for owner in (model, getattr(model, "head", None)):
        pool = getattr(owner, "global_pool", None)
        if isinstance(pool, str):
            return pool
        if isinstance(getattr(pool, "pool_type", None), str):
            return pool.pool_type
    return "avg"


def _channels_last(model: nn.Module, fmap: torch.Tensor) -> bool:
    """Whether a 4-d feature map is B x H x W x C: timm's declared `output_fmt` (Swin says 'NHWC'),
    else the axis that holds the model's `num_features`."""
    fmt = getattr(model, "output_fmt", None)
    fmt = getattr(fmt, "value", fmt)
    if isinstance(fmt, str) and fmt in ("NCHW", "NHWC"):
        return fmt == "NHWC"
    width = getattr(model, "num_features", None)
    return width is not None and fmap.shape[1] != width and fmap.shape[-1] == width


def _token_grid(model: nn.Module, tokens: int, image_size) -> tuple[int, int]:
    """H x W of the patch grid of a transformer: from timm's patch embedding for this input size,
    else the square that holds the patch tokens."""
    embed = getattr(model, "patch_embed", None)
    if hasattr(embed, "dynamic_feat_size"):
        h, w = embed.dynamic_feat_size(tuple(image_size))
        if h * w == tokens:
            return h, w
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(
            f"{type(model).__name__} returns {tokens} patch tokens, which form no grid its patch embedding "
            "describes; give it an input whose patch grid is known (a square one, or a timm patch_embed).")
    return side, side


def _check_input_size(model: nn.Module, x: torch.Tensor) -> None:
    """A timm ViT built for one image size refuses others inside its patch embedding: say so first."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if getattr(embed, "strict_img_size", False) and size is not None and tuple(size) != tuple(x.shape[-2:]):
        raise ValueError(
            f"{type(model).__name__} was built for {size[0]}x{size[1]} inputs and got "
            f"{x.shape[-2]}x{x.shape[-1]}; build it with img_size={tuple(x.shape[-2:])} or "
            "dynamic_img_size=True (timm.create_model(..., dynamic_img_size=True)).")


class ScaleDecoupled(nn.Module):
    """Wrap a classifier so one forward pass returns `(logits, region_logits)`.

    `logits` is the model's own output. `region_logits` is B x num_classes x N: every region,
    pooled by `pool_regions` (the authors' rule for the paper's M), is scored by the model's whole head: pooled to a
    1x1 map (or a one-token sequence) and passed through the model's own `forward_head`, all B*N
    regions as one batch, so norms, 1x1 convs, activations, pre-logits and dropout (in the model's
    current mode) act on a region exactly as on the globally pooled features. SD distillation thus
    needs no extra parameters and no second pass through the backbone.

    Feature layouts (from `forward_features`):
    * B x C x H x W, and B x H x W x C where timm says `output_fmt == 'NHWC'` (Swin);
    * B x T x C tokens (ViT, DeiT, hybrids): the last T - `num_prefix_tokens` tokens form the patch
      grid; class, distillation and register tokens are not regions. A region is the mean of its
      patch tokens, put where the head reads its input (every token position of a one-region
      sequence), so the head scores it as it scores the model's own pooled token. For models that
      average their patch tokens (global_pool='avg') the global region follows the pooling rule like
      a CNN's. For models whose global logit comes from the class token (global_pool='token') a
      region logit is what the class token's head concludes from the patch tokens of that part of
      the image (tokens that have attended to the whole image, as a CNN's late features see far
      beyond their cell), and region 0 (the global region) is the model's own class-token logit,
      so the global term of SD is the ordinary KD term on the model's output.
    A distilled DeiT (class and distillation tokens) is scored as timm scores it for prediction: the
    mean of its two heads, for the model's logits and for every region alike (a region fills both token
    positions). In training with `distilled_training=True` timm returns the two heads separately, for
    DeiT's own loss that trains them towards different targets; averaging them there would silently drop
    that loss, so SD refuses it and asks for `set_distilled_training(False)` (timm's plain training mode).
    Refused (one sentence, before any torch shape error): models without spatial features, heads
    that pool other than by averaging or the class token (max, attention pooling mix positions), heads
    that return more than one logit tensor.
    """

    def __init__(self, model: nn.Module, scales=(1, 2, 4)):
        super().__init__()
        self.model = model
        self.scales = parse_scales(scales)
        self._features, self._head = _model_parts(model)
        self._pool = _pool_type(model)
        if self._pool not in _AVERAGE_POOLS + (_TOKEN_POOL,):
            raise ValueError(
                f"{type(model).__name__} pools its features with {self._pool!r}, but SD regions are "
                "average-pooled parts of the map, which that head would not score as it scores the whole "
                "image; build the model with global_pool='avg' (or 'token' for a class-token transformer).")

    @property
    def num_regions(self) -> int:
        return num_regions(self.scales)

    def forward(self, x: torch.Tensor):
        _check_input_size(self.model, x)
        features = self._features(x)
        grid, as_head_input = self._grid(features, x)
        self.grid_size = tuple(grid.shape[-2:])   # the map the regions come from (read by the callbacks' notes)
        logits = self._head(features)
        if isinstance(logits, (tuple, list)):
            raise ValueError(
                f"{type(self.model).__name__}'s head returns {len(logits)} logit tensors (timm's DeiT does so in "
                "training when distilled_training=True, for DeiT's own loss on its distillation token), but SD "
                "distils one logit per region; call model.set_distilled_training(False), and its head averages "
                "the class and distillation heads as timm's DeiT does at inference.")
        regions = pool_regions(grid, self.scales)                               # B x C x N
        B, C, N = regions.shape
        region_logits = self._head(as_head_input(regions.transpose(1, 2).reshape(B * N, C)))
        region_logits = region_logits.reshape(B, N, -1).transpose(1, 2)        # B x K x N
        if self._pool == _TOKEN_POOL:
            region_logits = torch.cat([logits.unsqueeze(2), region_logits[..., 1:]], dim=2)
        return logits, region_logits

    def _grid(self, features: torch.Tensor, x: torch.Tensor):
        """The B x C x H x W grid to pool, and how a batch of C-vectors becomes the head's input."""
        name = type(self.model).__name__
        if features.dim() == 4 and _channels_last(self.model, features):
            return features.permute(0, 3, 1, 2), lambda v: v[:, None, None, :]
        if features.dim() == 4:
            if self._pool == _TOKEN_POOL:
                raise ValueError(f"{name} reads a class token but returns a spatial map; "
                                 "build it with global_pool='avg'.")
            return features, lambda v: v[:, :, None, None]
        if features.dim() == 3:
            prefix = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
            patches = features[:, prefix:]
            h, w = _token_grid(self.model, patches.shape[1], x.shape[-2:])
            grid = patches.transpose(1, 2).reshape(features.shape[0], features.shape[2], h, w)
            return grid, lambda v: v[:, None, :].expand(-1, prefix + 1, -1)
        raise ValueError(
            f"{name}.forward_features returns shape {tuple(features.shape)}, which has no spatial positions "
            "to pool into regions; expose the map (or token sequence) that its head pools as forward_features.")

    def extra_repr(self) -> str:
        return f"scales={list(self.scales)}"


def feature_grid(model: nn.Module, image_size: int) -> tuple[int, int]:
    """H x W of the grid SD pools from `model` on image_size x image_size inputs: one forward pass of zeros,
    in eval mode and without gradients, so that M can be checked against it before any training."""
    wrapped, x = ScaleDecoupled(model, (1,)), torch.zeros(1, 3, image_size, image_size)
    _check_input_size(model, x)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            grid, _ = wrapped._grid(wrapped._features(x), x)
    finally:
        model.train(training)
    return tuple(grid.shape[-2:])
