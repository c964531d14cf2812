"""Scale Decoupled Distillation (SDD, CVPR 2024) as a thin library on top of PyTorch and fastai."""

__version__ = "0.1.0"
