"""A model that sees images under its own normalisation while the loaders normalise them for another model.

With `normalize: model` the loaders normalise the images with the mean/std of the model they train (the student,
or a teacher trained here), and a teacher pretrained with other values is wrapped in `Renormalized`: one affine
step per channel on the batch the loaders already made, so each model sees its own normalisation of the same
images without a second pass over the data.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..regions import _model_parts

__all__ = ["Renormalized"]


class Renormalized(nn.Module):
    """`model` fed images normalised with `data_stats` (mean, std) as if they had been normalised with
    `model_stats`: x -> (x * data_std + data_mean - model_mean) / model_std. `forward_features` and
    `forward_head` keep timm's interface (SD pools the wrapped model's own map); any other attribute (patch
    embedding, pooling type, ...) is the model's. Its two per-channel tensors are not saved with it."""

    def __init__(self, model: nn.Module, data_stats, model_stats):
        super().__init__()
        self.model = model
        (data_mean, data_std), (mean, std) = ([torch.as_tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                                               for v in stats] for stats in (data_stats, model_stats))
        self.register_buffer("scale", data_std / std, persistent=False)
        self.register_buffer("shift", (data_mean - mean) / std, persistent=False)
        self.stats = {"data": [list(map(float, v)) for v in data_stats],
                      "model": [list(map(float, v)) for v in model_stats]}

    def renormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    def forward(self, x):
        return self.model(self.renormalize(x))

    def forward_features(self, x):
        return _model_parts(self.model)[0](self.renormalize(x))

    def forward_head(self, fmap, *args, **kwargs):
        return _model_parts(self.model)[1](fmap, *args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def extra_repr(self) -> str:
        return f"data mean/std {self.stats['data']} -> model mean/std {self.stats['model']}"
