"""The registry of logit losses: the contract every registered loss keeps (shapes, finiteness, gradients to the
student only, SD at M=[1] = the plain loss), logit standardization against a plain restatement of its formula,
the typed configuration of a registered loss, and a new loss registered and trained through the real Learner."""
from pathlib import Path

import pytest
import torch
import yaml
import torch.nn as nn
from fastai.learner import Learner

from sddlib import losses, report
from sddlib.config import ConfigError, RunConfig
from sddlib.departures import departures
from sddlib.distill import DistillationCallback
from sddlib.losses import LOSSES, Hyper, logit_loss, register_loss, sdd_loss, standardize

from test_distill import SmallNet, make_dls


def _l2_rows(student, teacher, target, scale=1.0):
    return scale * (student - teacher).pow(2).mean(1)


@pytest.fixture
def l2():
    """A plain L2 between the logits, registered for one test and removed after it."""
    entry = register_loss("l2", _l2_rows, hyper={"scale": Hyper(1.0, low=0)}, ce_weight=1.0, kd_weight=0.5,
                          standardized={"scale": 4.0})
    yield entry
    del LOSSES["l2"]


def _batch(B=6, K=7, N=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, K) if N is None else (B, K, N)
    return (torch.randn(*shape, generator=g) * 3, torch.randn(*shape, generator=g) * 3,
            torch.randint(0, K, (B,), generator=g))


def _contract_losses():
    """Every loss registered when the tests are collected, and the L2 of the fixture."""
    return [*LOSSES, "l2"]


@pytest.mark.parametrize("base", _contract_losses())
@pytest.mark.parametrize("standardized", [False, True])
def test_every_registered_loss_keeps_the_contract(base, standardized, l2):
    s, t, y = _batch()
    student = nn.Linear(7, 7)
    with torch.inference_mode():  # as the callback computes the teacher's logits
        t = nn.Linear(7, 7)(t)
    t = t.clone()
    kwargs = LOSSES[base].recipe(standardized)
    hyper = {k: kwargs[k] for k in LOSSES[base].loss_keys}
    rows = logit_loss(base, student(s), t, y, logit_standardization=standardized, reduction="none", **hyper)
    assert rows.shape == (6,) and rows.dtype == torch.float32 and torch.isfinite(rows).all()
    rows.sum().backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert not t.requires_grad and t.grad is None
    s = student(s).detach()
    # SD at M=[1] (one region) is the plain loss
    plain = logit_loss(base, s.detach(), t.detach(), y, logit_standardization=standardized, **hyper)
    one_region = sdd_loss(s.detach()[..., None], t.detach()[..., None], y, base=base,
                          logit_standardization=standardized, **hyper)
    torch.testing.assert_close(one_region, plain)


@pytest.mark.parametrize("base", _contract_losses())
def test_sd_version_of_every_loss_is_finite_with_gradient_to_the_student_only(base, l2):
    s, t, y = _batch(N=5)
    s.requires_grad_()
    loss = sdd_loss(s, t, y, base=base, logit_standardization=True)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(s.grad).all()


def _restated_normalize(x):
    """The logit-standardization authors' `normalize`, restated: mean and unbiased std over classes, 1e-7."""
    mean = x.sum(-1, keepdim=True) / x.shape[-1]
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / (x.shape[-1] - 1)
    return (x - mean) / (1e-7 + var.sqrt())


def test_standardize_is_the_authors_normalize():
    s, _, _ = _batch(K=100)
    torch.testing.assert_close(standardize(s), _restated_normalize(s))
    z = standardize(s * 5 + 3)
    torch.testing.assert_close(z, standardize(s), rtol=1e-5, atol=1e-5)  # shift and scale free


def test_kd_with_standardization_matches_a_plain_restatement():
    s, t, y = _batch(K=10)
    T = 2.0
    zs, zt = _restated_normalize(s) / T, _restated_normalize(t) / T
    ref = (zt.softmax(1) * (zt.log_softmax(1) - zs.log_softmax(1))).sum(1) * T * T
    torch.testing.assert_close(logit_loss("kd", s, t, y, logit_standardization=True, T=T, reduction="none"), ref)


def test_sd_standardizes_every_region_on_its_own():
    s, t, y = _batch(N=5)
    B, K, N = s.shape
    rows = lambda r: _restated_normalize(r.permute(0, 2, 1).reshape(B * N, K))
    expected = sdd_loss(rows(s).reshape(B, N, K).permute(0, 2, 1), rows(t).reshape(B, N, K).permute(0, 2, 1), y,
                        base="dkd", alpha=9.0, beta=72.0, T=2.0)
    ours = sdd_loss(s, t, y, base="dkd", logit_standardization=True, alpha=9.0, beta=72.0, T=2.0)
    torch.testing.assert_close(ours, expected)


def test_standardization_defaults_fingerprint_and_variant():
    base = dict(dataset="digit_mosaic", method="kd", M="[1]")
    plain, ls = RunConfig.from_params(base), RunConfig.from_params({**base, "logit_standardization": True})
    assert (plain.T, plain.ce_weight, plain.kd_weight) == (4.0, 0.1, 0.9)
    assert (ls.T, ls.ce_weight, ls.kd_weight) == (2.0, 1.0, 9.0) and ls.variant == "kd+ls"
    assert "logit_standardization" not in plain.fingerprint and "loss_params" not in plain.fingerprint
    assert ls.fingerprint["logit_standardization"] is True
    dkd = RunConfig.from_params({**base, "method": "dkd", "M": "[1,2,4]", "logit_standardization": True})
    assert (dkd.alpha, dkd.beta, dkd.T, dkd.warmup_epochs, dkd.variant) == (9.0, 72.0, 2.0, 20, "sd_dkd+ls")
    assert RunConfig.from_params({**base, "logit_standardization": True, "T": 3.0}).T == 3.0


def test_a_registered_loss_in_the_configuration(l2):
    cfg = RunConfig.from_params(dict(dataset="digit_mosaic", method="l2", M="[1,2,4]", loss_params={"scale": 0.5}))
    assert cfg.loss_kwargs == {"scale": 0.5} and cfg.T is None and cfg.variant == "sd_l2"
    assert (cfg.ce_weight, cfg.kd_weight, cfg.fingerprint["loss_params"]) == (1.0, 0.5, {"scale": 0.5})
    assert RunConfig.from_params(dict(dataset="digit_mosaic", method="l2")).loss_params == {"scale": 1.0}
    assert RunConfig.from_params(dict(dataset="digit_mosaic", method="l2",
                                      logit_standardization=True)).loss_params == {"scale": 4.0}
    assert cfg.replace(seed=1).loss_params == {"scale": 0.5}
    with pytest.raises(ConfigError, match="scale=-1.0 is not accepted; scale must be a finite number >= 0"):
        RunConfig.from_params(dict(dataset="digit_mosaic", method="l2", loss_params={"scale": -1.0}))
    with pytest.raises(ConfigError, match="loss_params key 'T' is not accepted for method l2"):
        RunConfig.from_params(dict(dataset="digit_mosaic", method="l2", loss_params={"T": 2.0}))
    with pytest.raises(ConfigError, match="give T as a parameter of its own"):
        RunConfig.from_params(dict(dataset="digit_mosaic", method="kd", loss_params={"T": 2.0}))
    with pytest.raises(ConfigError, match="loss_params=3 is not accepted"):
        RunConfig.from_params(dict(dataset="digit_mosaic", method="l2", loss_params=3))


def test_registration_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="'kd' is a built-in loss and cannot be replaced"):
        register_loss("kd", _l2_rows)
    with pytest.raises(ValueError, match="loss name 'sd_x' is not accepted"):
        register_loss("sd_x", _l2_rows)
    with pytest.raises(ValueError, match="hyper-parameter 'kd_weight' of 'x' must be a Hyper"):
        register_loss("x", _l2_rows, hyper={"kd_weight": Hyper(1.0)})
    with pytest.raises(ValueError, match="standardized default 'T' of 'x' is neither"):
        register_loss("x", _l2_rows, standardized={"T": 2.0})
    assert "x" not in LOSSES
    register_loss("bad_shape", lambda s, t, y: (s - t).pow(2))
    try:
        with pytest.raises(ValueError, match="returned shape \\(6, 7\\); a registered loss returns one value"):
            logit_loss("bad_shape", *_batch())
    finally:
        del LOSSES["bad_shape"]


@pytest.mark.slow  # two short fits
@pytest.mark.parametrize("scales", [(1,), (1, 2, 4)])
def test_a_new_loss_trains_plain_and_sd_through_the_learner(scales, l2):
    torch.manual_seed(0)
    teacher, student = SmallNet(), SmallNet()
    cb = DistillationCallback(teacher, method="l2", scales=scales, logit_standardization=True)
    assert (cb.ce_weight, cb.kd_weight, cb.loss_kwargs) == (1.0, 0.5, {"scale": 4.0})
    learn = Learner(make_dls(n=64), student, loss_func=nn.CrossEntropyLoss(), cbs=cb, lr=0.05)
    before = [p.detach().clone() for p in student.parameters()]
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    assert len(cb.history) == 1 and cb.history[0]["distill"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert all(not p.requires_grad for p in teacher.parameters())
    assert losses.LOSSES["l2"] is l2


LS_FILES = sorted((Path(__file__).resolve().parents[1] / "params" / "cifar100" / "logit_standardization").glob("*.yaml"))


def test_ls_params_files_are_sd_runs_beside_no_sdd_row():
    assert len(LS_FILES) == 6
    reported = report.ls_paper_results()
    for path in LS_FILES:
        values = yaml.safe_load(path.read_text())
        cfg = RunConfig.from_params(values)
        assert cfg.logit_standardization and cfg.scales == (1, 2, 4) and cfg.variant == f"sd_{cfg.method}+ls"
        # the SDD config's solver, and a departure from it (never as published)
        sdd = yaml.safe_load((path.parents[1] / f"{cfg.teacher}-{cfg.student}-sd_{cfg.method}.yaml").read_text())
        assert {k: v for k, v in sdd.items() if k not in ("ce_weight", "kd_weight", "T", "alpha", "beta")} == \
            {k: v for k, v in values.items() if k in sdd and k not in ("ce_weight", "kd_weight", "T", "alpha", "beta")}
        found = departures(cfg, {"source": "published"})[1]
        assert found["logit_standardization"] == [True, False]
        # the numbers the header quotes are the reference file's
        rows = reported[(reported.teacher == cfg.teacher) & (reported.student == cfg.student)]
        for method in (cfg.method, f"{cfg.method}+ls"):
            top1 = rows[rows.method == method].top1.item()
            assert f"{method.upper()} {top1:.2f}" in path.read_text()


def test_tables_pair_ls_and_registered_variants_by_seed(tmp_path):
    from test_report import metrics, write
    root = tmp_path / "outputs"
    ls = {"departures": {"logit_standardization": [True, False]}}
    for seed, (plain, sd) in enumerate([(94.0, 94.5), (94.2, 94.1)]):
        for variant, best in (("kd+ls", plain), ("sd_kd+ls", sd)):
            m = metrics(dataset="digit_mosaic", method="kd", scales=[1] if variant == "kd+ls" else [1, 2, 4],
                        seed=seed, best=best, last=best, **ls)
            m.update(variant=variant, run_name=m["run_name"].replace(m["variant"], variant))
            write(root, m)
        write(root, metrics(dataset="digit_mosaic", method="kd", scales=[1], seed=seed, best=93.0, last=93.0))
    runs = report.load_runs(root)
    table = report.results_table(runs, "digit_mosaic", published_only=False).set_index("method")
    assert list(table.index) == ["teacher", "kd", "kd+ls", "sd_kd+ls"]
    assert table.loc["sd_kd+ls", "sd_gain_ours"] == pytest.approx((94.5 + 94.1 - 94.0 - 94.2) / 2)
    gains = report.sd_gains(runs, "digit_mosaic", published_only=False)
    assert list(gains.method) == ["kd", "kd+ls"]          # KD's row says it has no SD-KD run to pair with
    assert gains.iloc[0].n_seeds == 0 and gains.iloc[0].missing == "SD-KD seeds 0, 1"
    assert gains.iloc[1].sd_ahead == 1 and gains.iloc[1].n_seeds == 2 and gains.iloc[1].missing == ""
    assert report.format_gains(gains).iloc[1]["Method"] == "SD-KD+LS − KD+LS"
    assert report.format_table(table.reset_index()).Method.tolist()[1:] == ["KD", "KD+LS", "SD-KD+LS"]


def test_a_notebook_parameter_switches_standardization_on():
    from sddlib.experiment import notebook_params
    cfg = notebook_params({"dataset": "digit_mosaic", "method": "dkd", "M": "[1]", "logit_standardization": True})
    assert cfg.variant == "dkd+ls" and (cfg.alpha, cfg.beta, cfg.T) == (9.0, 72.0, 2.0)
