"""Losses against a plain re-statement of the authors' formulas (log of softmax, -1000 masking,
their category bookkeeping), plus the hand-computed SD example and sturdiness checks."""
import pytest
import torch
import torch.nn.functional as F

from sddlib.losses import (dkd_loss, kd_loss, nkd_loss, region_masks, region_weights, sdd_loss)

# --- the authors' semantics, written out naively (rows = region-major, as their code orders them) ---


def ref_kd_rows(s, t, T):
    return (F.softmax(t / T, 1) * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1) * T * T


def ref_dkd_rows(s, t, y, alpha, beta, T):
    gt = torch.zeros_like(s).scatter_(1, y[:, None], 1).bool()
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = (bt * (torch.log(bt) - torch.log(bs))).sum(1)
    pt2 = F.softmax(t / T - 1000.0 * gt, 1)
    ls2 = F.log_softmax(s / T - 1000.0 * gt, 1)
    nckd = torch.where(pt2 > 0, pt2 * (torch.log(pt2) - ls2), torch.zeros_like(pt2)).sum(1)
    return (alpha * tckd + beta * nckd) * T * T


def ref_nkd_rows(s, t, y, T, gamma):
    # their mask keeps the target in the non-target distribution
    lt = -(F.softmax(t, 1).gather(1, y[:, None]) * F.log_softmax(s, 1).gather(1, y[:, None])).squeeze(1)
    non = -(F.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum(1) * gamma * T * T
    return lt + non


def ref_sdd(s_regions, t_regions, y, rows_fn):
    """Region-major flattening, region 0 = global, weights 2 for complementary, / (N*B)."""
    B, K, N = s_regions.shape
    s = s_regions.permute(2, 0, 1).reshape(N * B, K)
    t = t_regions.permute(2, 0, 1).reshape(N * B, K)
    yr = y.repeat(N)
    loss = rows_fn(s, t, yr)
    pred = t.argmax(1)
    glob_right = (pred[:B] == y).repeat(N)
    local_right = pred == yr
    weight = torch.where(glob_right != local_right, 2.0, 1.0)
    return (loss * weight).sum() / (N * B)


BASES = {
    "kd": (dict(T=4.0), lambda s, t, y: ref_kd_rows(s, t, 4.0)),
    "dkd": (dict(alpha=1.0, beta=8.0, T=4.0), lambda s, t, y: ref_dkd_rows(s, t, y, 1.0, 8.0, 4.0)),
    "nkd": (dict(T=4.0, gamma=2.0), lambda s, t, y: ref_nkd_rows(s, t, y, 4.0, 2.0)),
}


def _close(a, b, rtol=1e-5, atol=1e-6):
    assert torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
@pytest.mark.parametrize("K", [5, 17, 100])
@pytest.mark.parametrize("N", [5, 21])
def test_sdd_loss_matches_reference_values_and_gradients(base, K, N):
    torch.manual_seed(K * 31 + N)
    B = 6
    s = (torch.randn(B, K, N, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(B, K, N, dtype=torch.float64) * 3
    y = torch.randint(0, K, (B,))
    t[:3, y[:3], 0] += 8.0                    # some samples globally right, so all categories occur
    kwargs, rows_fn = BASES[base]
    ours = sdd_loss(s.float(), t.float(), y, base=base, **kwargs)
    s2 = s.detach().clone().requires_grad_()
    ref = ref_sdd(s2, t, y, rows_fn)
    _close(ours.double(), ref)
    g_ours, = torch.autograd.grad(sdd_loss(s, t, y, base=base, **kwargs), s)
    g_ref, = torch.autograd.grad(ref, s2)
    _close(g_ours.double(), g_ref, atol=1e-7)


@pytest.mark.parametrize("K", [5, 100])
def test_plain_losses_match_reference(K):
    torch.manual_seed(K)
    s, t = torch.randn(8, K, dtype=torch.float64) * 2, torch.randn(8, K, dtype=torch.float64) * 2
    y = torch.randint(0, K, (8,))
    _close(kd_loss(s, t, T=4.0).double(), ref_kd_rows(s, t, 4.0).mean())
    _close(dkd_loss(s, t, y, alpha=1.0, beta=8.0, T=4.0).double(), ref_dkd_rows(s, t, y, 1.0, 8.0, 4.0).mean())
    _close(nkd_loss(s, t, y, T=1.0, gamma=1.5).double(), ref_nkd_rows(s, t, y, 1.0, 1.5).mean())
    per = dkd_loss(s, t, y, reduction="none")
    assert per.shape == (8,)


def test_nkd_exclude_target_is_the_papers_formula():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    y = torch.tensor([0, 5, 2, 2])
    keep = ~F.one_hot(y, 6).bool()
    sn, tn = s[keep].view(4, 5), t[keep].view(4, 5)
    lt = -(F.softmax(t, 1).gather(1, y[:, None]) * F.log_softmax(s, 1).gather(1, y[:, None])).squeeze(1)
    expected = lt - 1.5 * (F.softmax(tn, 1) * F.log_softmax(sn, 1)).sum(1)
    _close(nkd_loss(s, t, y, exclude_target=True, reduction="none"), expected)
    assert not torch.allclose(nkd_loss(s, t, y, exclude_target=False), nkd_loss(s, t, y, exclude_target=True))


def test_hand_computed_sd_example_with_all_four_categories():
    # 2 samples, 3 classes, scales (1, 2) -> 5 regions. Teacher top-1 per region chosen on purpose.
    y = torch.tensor([0, 1])
    teacher_top1 = torch.tensor([[0, 0, 2, 0, 1],     # sample 0: global right; regions 2, 4 wrong
                                 [2, 1, 2, 1, 0]])    # sample 1: global wrong; regions 1, 3 right
    t = F.one_hot(teacher_top1, 3).permute(0, 2, 1).float() * 5.0     # B x K x N
    s = torch.zeros(2, 3, 5)                                          # uniform student
    masks = region_masks(t, y)
    assert masks.global_right_local_right.tolist() == [[True, True, False, True, False], [False] * 5]
    assert masks.global_right_local_wrong.tolist() == [[False, False, True, False, True], [False] * 5]
    assert masks.global_wrong_local_right.tolist() == [[False] * 5, [False, True, False, True, False]]
    assert masks.global_wrong_local_wrong.tolist() == [[False] * 5, [True, False, True, False, True]]
    stacked = torch.stack(list(masks)).sum(0)
    assert (stacked == 1).all()                   # a partition
    # Every row has the same KD value: teacher one-hot-ish logits [5,0,0]/T vs uniform student.
    T = 4.0
    p = torch.softmax(torch.tensor([5.0, 0.0, 0.0]) / T, 0)
    row = float((p * (p.log() - torch.log(torch.tensor(1 / 3)))).sum() * T * T)
    weights = region_weights(masks)
    assert weights.sum().item() == 4 * 2 + 6 * 1
    expected = row * (4 * 2 + 6 * 1) / 10
    assert sdd_loss(s, t, y, base="kd", T=T).item() == pytest.approx(expected, rel=1e-6)
    assert sdd_loss(s, t, y, base="kd", T=T, complementary_weight=1.0).item() == pytest.approx(row, rel=1e-6)


def test_single_region_equals_plain_loss():
    torch.manual_seed(1)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    for base, fn, kw in [("kd", lambda: kd_loss(s, t), {}), ("dkd", lambda: dkd_loss(s, t, y), {}),
                         ("nkd", lambda: nkd_loss(s, t, y, T=4.0, gamma=2.0), dict(T=4.0, gamma=2.0))]:
        _close(sdd_loss(s[..., None], t[..., None], y, base=base, **kw), fn())


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
@pytest.mark.parametrize("autocast", [False, True])
def test_no_nan_or_inf_from_huge_finite_logits(base, autocast):
    torch.manual_seed(2)
    s = (torch.randn(4, 10, 5) * 1e4).requires_grad_()
    t = torch.randn(4, 10, 5) * 1e4
    y = torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        s_in = s.bfloat16() if autocast else s
        loss = sdd_loss(s_in, t.to(s_in.dtype), y, base=base)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    for plain in (kd_loss(s[..., 0], t[..., 0]), dkd_loss(s[..., 0], t[..., 0], y), nkd_loss(s[..., 0], t[..., 0], y)):
        assert torch.isfinite(plain)


def test_rejected_inputs_have_clear_messages():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="targets must lie in \\[0, 2\\]"):
        sdd_loss(s, t, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="do not match a batch of 2"):
        sdd_loss(s, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="differ; both models need the same classes"):
        sdd_loss(s, torch.randn(2, 4, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch x classes x regions"):
        sdd_loss(s[..., 0], t[..., 0], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="base loss 'ce' is unknown"):
        sdd_loss(s, t, torch.tensor([0, 1]), base="ce")
    with pytest.raises(ValueError, match="must both be batch x classes and of equal shape"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="reduction 'avg'"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), reduction="avg")
