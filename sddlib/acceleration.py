"""The speed switches of a run — `channels_last`, `precision`, `compile` — as one fastai callback.

They change how a step is computed, not what it computes, so the Learner, the distillation callback and
the metrics stay as they are:
- `channels_last`: the student, the teacher and every input batch in NHWC memory layout (what tensor
  cores and cuDNN's fastest convolutions want); the same fp32 arithmetic.
- `precision="bf16"`: the student's and the teacher's forward passes (and so the backward pass) under
  `torch.autocast` with bfloat16; their outputs are cast back to fp32, so losses, the finiteness check
  and the metrics are computed in fp32. bf16 needs no loss scaling (its exponent range is fp32's).
  It changes the numbers, so a bf16 run is another run (its fingerprint) and a departure from the paper.
- `compile`: `torch.compile` of the modules a step runs — with distillation the student's and the
  teacher's scale-decoupled forwards, otherwise the model — in the given mode; "reduce-overhead" replays
  them as CUDA graphs (a few launches per step instead of one per operation). The optimizer step (torch's
  foreach SGD) and the plain validation forward stay eager.

The autocast is entered and left by forward hooks of the two modules (the exit hook runs even when the
forward raises), and `release()` removes every hook, so nothing leaks into code that uses the models
after a fit, however it ended.
"""
from __future__ import annotations

import weakref

import torch
from fastai.callback.core import Callback

from .config import COMPILE_MODES, PRECISIONS
from .distill import DistillationCallback

__all__ = ["SpeedSwitches"]


def _to_float(output):
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (tuple, list)):
        return type(output)(_to_float(o) for o in output)
    return output


class SpeedSwitches(Callback):
    """Apply a run's speed switches to the Learner's model and, with distillation, the teacher."""
    # before DistributedTraining (11) wraps the model in DDP, and before DistillationCallback (100) captures the batch
    order = 10

    def __init__(self, channels_last: bool = False, precision: str = "fp32", compile: str = "off"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}.")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r} is not one of {COMPILE_MODES}.")
        self.channels_last, self.precision, self.compile_mode = channels_last, precision, compile
        self._hooks, self._autocasts, self._compiled = [], [], weakref.WeakSet()

    def _distill(self) -> DistillationCallback | None:
        return next((cb for cb in self.learn.cbs if isinstance(cb, DistillationCallback)), None)

    def before_fit(self):
        distill = self._distill()
        models = [self.learn.model] + ([distill.teacher] if distill else [])
        if self.channels_last:
            for model in models:
                model.to(memory_format=torch.channels_last)
        if self.precision == "bf16":
            device_type = next(self.learn.model.parameters()).device.type
            # the Learner's call of the student (training and validation) and the teacher's region forward
            for module in [self.learn.model] + ([distill._sd_teacher] if distill else []):
                self._hooks.append(module.register_forward_pre_hook(lambda m, a: self._enter(device_type)))
                self._hooks.append(module.register_forward_hook(lambda m, a, out: self._exit(out),
                                                                always_call=True))

    def before_train(self):
        # after DistillationCallback.before_fit has built the student's scale-decoupled wrapper
        if self.compile_mode == "off":
            return
        distill, mode = self._distill(), None if self.compile_mode == "default" else self.compile_mode
        for module in [distill._sd_student, distill._sd_teacher] if distill else [self.learn.model]:
            if module not in self._compiled:
                module.compile(mode=mode)
                self._compiled.add(module)

    def before_batch(self):
        if self.channels_last and self.learn.xb and self.learn.xb[0].dim() == 4:
            self.learn.xb = (self.learn.xb[0].contiguous(memory_format=torch.channels_last), *self.learn.xb[1:])

    def _enter(self, device_type: str) -> None:
        autocast = torch.autocast(device_type, dtype=torch.bfloat16)
        autocast.__enter__()
        self._autocasts.append(autocast)

    def _exit(self, output):
        self._autocasts.pop().__exit__(None, None, None)
        return _to_float(output)

    def release(self) -> None:
        """Remove the autocast hooks (and leave any autocast a failed forward left open)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        while self._autocasts:
            self._autocasts.pop().__exit__(None, None, None)

    def after_fit(self): self.release()
    def after_cancel_fit(self): self.release()
