"""Scale Decoupled Distillation (SDD, CVPR 2024) as a thin library on top of PyTorch and fastai."""

import warnings

__version__ = "0.1.0"

# fastai (which sddlib imports) decorates functions with torch.jit.script when imported, and recent torch versions
# warn about that: not the user's code, nothing to act on, so not shown.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning,
                        module=r"torch\.jit")


def __getattr__(name):
    """`sddlib.distill_learner` (the one call for your own DataLoaders and models), imported on first use so that
    `import sddlib` alone stays light: no fastai until a run is trained. (`python -m sddlib.sweep` imports the
    training code itself, to measure runs and read their results; its notebooks train them.)"""
    if name == "distill_learner":
        from .training import distill_learner
        return distill_learner
    raise AttributeError(f"module 'sddlib' has no attribute {name!r}")
