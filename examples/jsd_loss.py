"""A template for your own loss on the paper's data: Jensen-Shannon distillation, registered as method "jsd" when this
module is imported (docs/losses.md).

A run names the module in its `imports` parameter, so every process of the run (python -m sddlib, a sweep's notebook
kernel, torchrun's workers) registers the loss before the parameters are checked. The recipe below (CE and
distillation weights, warm-up, T) is what a run takes when its params file does not set them, and what replaces an
authors' file's KD values when you run that file with `-p method jsd` (jsd_cifar100.yaml says how). Its numbers are
a starting point, not tuned ones. Run the commands from this folder (or put it on PYTHONPATH):

    cd examples
    python -m sddlib -f jsd_cifar100.yaml -p data_dir <data folder>     # SD-JSD on CIFAR-100, resnet32x4 -> ShuffleV1
    python -m sddlib.sweep jsd_cifar100.yaml -p M "[1]" -p data_dir <data folder>   # plain JSD, notebooks/cifar100
"""
import math

import torch

from sddlib.losses import Hyper, register_loss


def jsd_rows(student, teacher, target, T=4.0):
    """One value per sample: the Jensen-Shannon divergence between the teacher's and the student's softened
    distributions (temperature T), times T^2 as KD's is; symmetric and bounded by log 2 (times T^2)."""
    log_s, log_t = (student / T).log_softmax(1), (teacher / T).log_softmax(1)
    log_mean = torch.logsumexp(torch.stack([log_s, log_t]), 0) - math.log(2)

    def kl_to_mean(log_p):
        return (log_p.exp() * (log_p - log_mean)).sum(1)
    return 0.5 * (kl_to_mean(log_t) + kl_to_mean(log_s)) * T * T


# T is a run parameter of its own (like KD's); a hyper-parameter of another name would go in `loss_params`.
register_loss("jsd", jsd_rows, hyper={"T": Hyper(4.0, low=0, low_open=True, doc="temperature")},
              ce_weight=1.0, kd_weight=2.0, warmup_epochs=20)
