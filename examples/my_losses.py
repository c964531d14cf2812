"""Your own logit loss, registered when this module is imported (docs/losses.md).

Name it in a run's `imports` parameter and every process of the run imports it before the parameters are checked,
so `method: l2` works in `python -m sddlib`, sweeps, torchrun and submitit jobs alike. Run the commands from this
folder (or put it on PYTHONPATH):

    cd examples
    python -m sddlib -f l2.yaml -p data_dir <images folder>      # one run: L2 between the logits, SD (M=[1,2,4])
    python -m sddlib.sweep l2.yaml -p data_dir <images folder>   # the folder notebook: plain and SD, figures
"""
from sddlib.losses import Hyper, register_loss


def l2_rows(student, teacher, target, scale=1.0):
    """One value per sample: the mean squared difference of the logits."""
    return scale * (student - teacher).pow(2).mean(1)


register_loss("l2", l2_rows,
              hyper={"scale": Hyper(1.0, low=0, doc="loss scale")},   # type float, accepted range >= 0
              ce_weight=1.0, kd_weight=1.0, warmup_epochs=0)
