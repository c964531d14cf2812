"""TTM, WTTM, RLD and ABKD (sddlib.loss_family): values on cases computed by hand, the authors' formulas restated
in probability space on random logits, the registered defaults, finite gradients at logits up to 1e4 (fp32 and
bf16 autocast), the SD version against a loop over regions, the configuration from a fresh process, the params
files, and training plain and SD through the real fastai Learner."""
import inspect
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from fastai.learner import Learner

from sddlib import loss_family
from sddlib.config import RunConfig
from sddlib.departures import departures
from sddlib.distill import DistillationCallback
from sddlib.losses import LOSSES, logit_loss, sdd_loss

from test_distill import SmallNet, make_dls

REPO = Path(__file__).resolve().parents[1]
FAMILY = ("ttm", "wttm", "rld", "abkd")
ROWS = {"ttm": loss_family.ttm_rows, "wttm": loss_family.wttm_rows, "rld": loss_family.rld_rows,
        "abkd": loss_family.abkd_rows}
# The table: each repository's README command for CIFAR-100 (hyper-parameters, CE, KD weight, warm-up).
RECIPES = {"ttm": dict(gamma=0.1, ce_weight=1.0, kd_weight=45.0, warmup_epochs=0),
           "wttm": dict(gamma=0.2, ce_weight=1.0, kd_weight=4.0, warmup_epochs=0),
           "rld": dict(alpha=1.0, beta=8.0, T=4.0, binary_T=4.0, ce_weight=1.0, kd_weight=1.0, warmup_epochs=20),
           "abkd": dict(alpha=0.8, beta=0.3, T=4.0, ce_weight=1.0, kd_weight=32.0, warmup_epochs=0)}


def _one(student, teacher, target, method, **hyper):
    return logit_loss(method, torch.tensor([student]), torch.tensor([teacher]), torch.tensor([target]),
                      **hyper).item()


# --- by hand -----------------------------------------------------------------------------------------
def test_ttm_and_wttm_by_hand():
    # teacher softmax (0.8, 0.2); gamma 1/2: sqrt -> (2, 1)/sqrt(5), renormalised (2/3, 1/3); student (1/2, 1/2)
    kl = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)
    assert _one([0.0, 0.0], [math.log(4), 0.0], 1, "ttm", gamma=0.5) == pytest.approx(kl, rel=1e-5)
    # WTTM weighs it by sqrt(0.8) + sqrt(0.2) = 3 / sqrt(5)
    assert _one([0.0, 0.0], [math.log(4), 0.0], 1, "wttm", gamma=0.5) == pytest.approx(3 / math.sqrt(5) * kl, rel=1e-5)
    # gamma 1 is KL(teacher || student) at temperature 1 without T^2; gamma 0 matches a uniform teacher
    assert _one([1.0, 0.0, 0.0], [math.log(4), 0.0, 0.0], 0, "ttm", gamma=1.0) == pytest.approx(
        sum(p * math.log(p / q) for p, q in zip([4 / 6, 1 / 6, 1 / 6], [math.e / (math.e + 2), 1 / (math.e + 2),
                                                                          1 / (math.e + 2)])), rel=1e-5)
    assert _one([0.0, 0.0, 0.0], [9.0, 1.0, -3.0], 2, "ttm", gamma=0.0) == pytest.approx(0.0, abs=1e-6)


def test_rld_by_hand():
    # teacher logits / 4 = log(4, 3, 2, 1): softmax (0.4, 0.3, 0.2, 0.1), top class 0; target 1; student uniform.
    teacher, student = [4 * math.log(v) for v in (4, 3, 2, 1)], [0.0] * 4
    binary = 0.4 * math.log(0.4 / 0.25) + 0.6 * math.log(0.6 / 0.75)       # (top, rest) vs student (target, rest)
    below = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)  # classes 2, 3 only: (2/3, 1/3)
    assert _one(student, teacher, 1, "rld") == pytest.approx(16 * (1 * binary + 8 * below), rel=1e-5)
    assert _one(student, teacher, 1, "rld", alpha=0.0) == pytest.approx(16 * 8 * below, rel=1e-5)
    # binary term at its own temperature: at binary_T 1 the teacher's (top, rest) is (4^4, 3^4+2^4+1) / 354
    top = 256 / 354
    assert _one(student, teacher, 1, "rld", beta=0.0, binary_T=1.0) == pytest.approx(
        top * math.log(top / 0.25) + (1 - top) * math.log((1 - top) / 0.75), rel=1e-5)
    # target the teacher ranks last: nothing below it, only the binary term; ties with the target are not below
    assert _one(student, teacher, 3, "rld", alpha=0.0) == pytest.approx(0.0, abs=1e-6)
    assert _one(student, [4.0, 1.0, 1.0, 0.0], 1, "rld", alpha=0.0) == pytest.approx(0.0, abs=1e-6)


def test_abkd_by_hand():
    # teacher logits / 4 = (log 3, 0): p = (3/4, 1/4); student q = (1/2, 1/2)
    teacher, student = [4 * math.log(3), 0.0], [0.0, 0.0]
    p, q = (0.75, 0.25), (0.5, 0.5)
    # alpha = beta = 1: sum(-p q + p^2/2 + q^2/2) = sum((p - q)^2) / 2
    assert _one(student, teacher, 0, "abkd", alpha=1.0, beta=1.0) == pytest.approx(0.0625, rel=1e-5)
    # the defaults, alpha 0.8 and beta 0.3 (a + b = 1.1)
    a, b = 0.8, 0.3
    by_hand = sum(-pi ** a * qi ** b + a / (a + b) * pi ** (a + b) + b / (a + b) * qi ** (a + b)
                  for pi, qi in zip(p, q)) / (a * b)
    assert _one(student, teacher, 0, "abkd") == pytest.approx(by_hand, rel=1e-5)
    # the limits the authors' code takes: beta 0 (alpha 1: KL(p || q)), alpha 0, both 0
    assert _one(student, teacher, 0, "abkd", alpha=1.0, beta=0.0) == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    assert _one(student, teacher, 0, "abkd", alpha=0.0, beta=1.0) == pytest.approx(
        0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), rel=1e-5)
    assert _one(student, teacher, 0, "abkd", alpha=0.0, beta=0.0) == pytest.approx(
        0.5 * (math.log(0.5 / 0.75) ** 2 + math.log(0.5 / 0.25) ** 2), rel=1e-5)


# --- the authors' formulas, restated in probability space ---------------------------------------------
def _restated(method, s, t, y):
    """Each loss per row as the authors' code writes it (softmax, powers, masks with -1e9, log of probabilities)."""
    if method in ("ttm", "wttm"):
        gamma = RECIPES[method]["gamma"]
        powered = t.softmax(1) ** gamma
        p = powered / powered.sum(1, keepdim=True)
        kl = (p * (p.log() - s.log_softmax(1))).sum(1)
        return kl * powered.sum(1) if method == "wttm" else kl
    if method == "rld":
        T = 4.0
        ps, pt = (s / T).softmax(1), (t / T).softmax(1)
        target = F.one_hot(y, s.shape[1]).bool()
        top = F.one_hot(t.argmax(1), s.shape[1]).bool()
        bs = torch.stack([(ps * target).sum(1), (ps * ~target).sum(1)], 1)
        bt = torch.stack([(pt * top).sum(1), (pt * ~top).sum(1)], 1)
        binary = (bt * (bt.log() - bs.log())).sum(1) * T ** 2
        mask = t >= t.gather(1, y[:, None])
        qs = (s / T).masked_fill(mask, -1e9).log_softmax(1)
        qt = (t / T).masked_fill(mask, -1e9).softmax(1)
        below = F.kl_div(qs, qt, reduction="none").sum(1) * T ** 2
        return binary + 8.0 * below
    a, b, T = 0.8, 0.3, 4.0
    p, q = (t / T).softmax(1), (s / T).softmax(1)
    return -(p ** a * q ** b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)).sum(1) / (a * b)


@pytest.mark.parametrize("method", FAMILY)
def test_each_loss_is_its_authors_formula_on_random_logits(method):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(64, 10, generator=g, dtype=torch.float64) * 3, torch.randn(64, 10, generator=g,
                                                                                   dtype=torch.float64) * 3
    y = torch.randint(0, 10, (64,), generator=g)
    ours = ROWS[method](s, t, y)
    torch.testing.assert_close(ours, _restated(method, s, t, y), rtol=1e-9, atol=1e-9)
    # and the registered loss (fp32, defaults) is its batch mean, as their code reduces
    torch.testing.assert_close(logit_loss(method, s, t, y), ours.mean().float(), rtol=1e-4, atol=1e-5)


# --- defaults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", FAMILY)
def test_registered_defaults_are_the_readme_commands_and_the_functions_own(method):
    entry = LOSSES[method]
    assert entry.recipe() == RECIPES[method]
    own = {k: p.default for k, p in inspect.signature(ROWS[method]).parameters.items()
           if p.default is not inspect.Parameter.empty and k != "target"}
    assert own == entry.loss_defaults


def test_configuration_of_the_family():
    cfg = RunConfig.from_params({"dataset": "digit_mosaic", "method": "rld", "M": "[1]",
                                 "loss_params": {"binary_T": 2.0}})
    assert cfg.loss_kwargs == {"alpha": 1.0, "beta": 8.0, "T": 4.0, "binary_T": 2.0} and cfg.warmup_epochs == 20
    ls = RunConfig.from_params({"dataset": "digit_mosaic", "method": "rld", "logit_standardization": True})
    assert ls.loss_kwargs == {"alpha": 9.0, "beta": 72.0, "T": 2.0, "binary_T": 2.0} and ls.variant == "sd_rld+ls"
    ttm = RunConfig.from_params({"dataset": "digit_mosaic", "method": "ttm", "gamma": 0.3})
    assert ttm.loss_kwargs == {"gamma": 0.3} and (ttm.T, ttm.alpha, ttm.ce_weight, ttm.kd_weight) == (None, None, 1, 45)


@pytest.mark.slow  # a fresh interpreter (sddlib and fastai imported)
def test_a_fresh_command_line_process_knows_the_family(tmp_path):
    """`python -m sddlib` checks an RLD run's own hyper-parameter: the method is registered there too."""
    done = subprocess.run([sys.executable, "-m", "sddlib", "-p", "dataset", "digit_mosaic", "-p", "method", "rld",
                           "-p", "loss_params", "{binary_T: 0}", "-p", "output_dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "binary_T=0 is not accepted; binary_T must be a finite number > 0. (method rld)" in done.stderr


@pytest.mark.slow  # a fresh interpreter (torch imported)
def test_importing_the_loss_module_alone_knows_the_family():
    """A script that imports only `sddlib.losses` (no configuration, no training code) computes every built-in loss."""
    code = ("import sys, torch; import sddlib.losses as L\n"
            "s, t, y = torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, 1])\n"
            f"print(sorted(L.LOSSES), [L.logit_loss(m, s, t, y).item() >= 0 for m in {FAMILY!r}],\n"
            "      sorted(m for m in sys.modules if m.startswith('sddlib.') and m != 'sddlib.validators'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ("['abkd', 'dkd', 'kd', 'nkd', 'rld', 'ttm', 'wttm'] [True, True, True, True] "
                                   "['sddlib.loss_family', 'sddlib.losses', 'sddlib.regions']").split()


# --- numerics ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", FAMILY)
@pytest.mark.parametrize("bf16", [False, True])
def test_gradients_are_finite_for_logits_up_to_1e4(method, bf16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    head = nn.Linear(8, 10)
    teacher = torch.randn(16, 10, generator=g) * 1e4
    y = torch.randint(0, 10, (16,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        student = head(x)
        student = student / student.abs().amax() * 1e4      # magnitudes up to 1e4, one exactly
        assert student.dtype == (torch.bfloat16 if bf16 else torch.float32)
        loss = logit_loss(method, student, teacher.to(student.dtype), y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in head.parameters())
    # a teacher sure of one class (probabilities exactly 0 elsewhere in fp32) and an equal student
    sure = torch.full((4, 10), -1e4)
    sure[:, 3] = 1e4
    sure.requires_grad_()
    same = logit_loss(method, sure, sure.detach(), torch.tensor([3, 3, 0, 9]), reduction="none")
    same.sum().backward()
    assert torch.isfinite(same).all() and torch.isfinite(sure.grad).all()


@pytest.mark.parametrize("method", FAMILY)
def test_sd_version_is_the_loss_on_every_region_weighted_by_category(method):
    g = torch.Generator().manual_seed(2)
    B, K, N = 5, 6, 21
    s, t = torch.randn(B, K, N, generator=g) * 3, torch.randn(B, K, N, generator=g) * 3
    y = torch.randint(0, K, (B,), generator=g)
    total = 0.0
    for b in range(B):
        global_right = bool(t[b, :, 0].argmax() == y[b])
        for n in range(N):
            weight = 2.0 if bool(t[b, :, n].argmax() == y[b]) != global_right else 1.0
            total += weight * logit_loss(method, s[b:b + 1, :, n], t[b:b + 1, :, n], y[b:b + 1]).item()
    torch.testing.assert_close(sdd_loss(s, t, y, base=method), torch.tensor(total / (B * N)), rtol=1e-5, atol=1e-6)


# --- params files ------------------------------------------------------------------------------------
FAMILY_FILES = sorted((REPO / "params" / "cifar100" / "logit_family").glob("*.yaml"))


def test_params_files_are_sd_runs_with_the_sdd_solver_beside_no_sdd_row():
    assert len(FAMILY_FILES) == 12
    pairs = {(RunConfig.from_params(yaml.safe_load(p.read_text())).method) for p in FAMILY_FILES}
    assert pairs == set(FAMILY)
    for path in FAMILY_FILES:
        values = yaml.safe_load(path.read_text())
        cfg = RunConfig.from_params(values)
        assert cfg.scales == (1, 2, 4) and path.stem == f"{cfg.teacher}-{cfg.student}-sd_{cfg.method}"
        assert {k: cfg[k] for k in RECIPES[cfg.method] if k in cfg} == \
            {k: v for k, v in RECIPES[cfg.method].items() if k in cfg}
        assert cfg.loss_kwargs == {k: v for k, v in RECIPES[cfg.method].items() if k in LOSSES[cfg.method].hyper}
        sdd = yaml.safe_load((path.parents[1] / f"{cfg.teacher}-{cfg.student}-sd_kd.yaml").read_text())
        solver = ("epochs", "batch_size", "lr", "lr_decay_stages", "lr_decay_rate", "weight_decay", "momentum")
        assert {k: sdd[k] for k in solver} == {k: values[k] for k in solver}
        # no SDD experiment to be compared with: the departures say so (never as published)
        found = departures(cfg, {"source": "published"})[1]
        assert found["experiment"] == [f"{cfg.teacher}-{cfg.student}-sd_{cfg.method}", None]


# --- training ----------------------------------------------------------------------------------------
@pytest.mark.trains
@pytest.mark.parametrize("method", FAMILY)
@pytest.mark.parametrize("scales", [(1,), (1, 2, 4)])
def test_each_trains_plain_and_sd_through_the_learner(method, scales):
    torch.manual_seed(0)
    teacher, student = SmallNet(), SmallNet()
    cb = DistillationCallback(teacher, method=method, scales=scales)
    recipe = RECIPES[method]
    assert (cb.ce_weight, cb.kd_weight) == (recipe["ce_weight"], recipe["kd_weight"])
    learn = Learner(make_dls(n=64), student, loss_func=nn.CrossEntropyLoss(), cbs=cb, lr=0.01)
    before = [p.detach().clone() for p in student.parameters()]
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    assert len(cb.history) == 1 and math.isfinite(cb.history[0]["distill"]) and cb.history[0]["distill"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert all(torch.isfinite(p).all() for p in student.parameters())
