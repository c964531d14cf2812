import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sddlib import experiment
from sddlib.config import ConfigError, RunConfig
from sddlib.regions import (ScaleDecoupled, feature_grid, num_regions, parse_scales, pool_regions, region_scales,
                            scales_tag)


class TinyNet(nn.Module):
    """Minimal model with timm's interface, used to test the wrapper independently of the zoo."""

    def __init__(self, num_classes=7, width=6):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return F.relu(self.conv(x))

    def forward_head(self, fmap):
        return self.fc(fmap.mean((2, 3)))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@pytest.mark.parametrize("given,expected", [((1, 2, 4), (1, 2, 4)), ([1, 2], (1, 2)), ("[1,2,4]", (1, 2, 4)),
                                            ("[1,2]", (1, 2)), ("[1]", (1,)), (" [1, 2] ", (1, 2)),
                                            ("[1,3]", (1, 3)), ([1, 2, 3], (1, 2, 3)), ("[1,2,4,7]", (1, 2, 4, 7)),
                                            ((1, 2, 12), (1, 2, 12))])
def test_parse_scales_accepts_the_documented_forms(given, expected):
    assert parse_scales(given) == expected


@pytest.mark.parametrize("bad", ["[]", "1,2,4x", "(1,2)", [2, 4], [1, 1], [1, 3, 2], "[0,1]", (), [1.0, 2.0], 4,
                                 None])
def test_parse_scales_rejects_with_one_sentence(bad):
    with pytest.raises(ValueError, match=r"scales .* use an increasing list of grid sizes starting at 1, e\.g\. "):
        parse_scales(bad)


def test_region_order_and_counts():
    assert num_regions("[1,2,4]") == 21 and num_regions((1, 2)) == 5
    assert region_scales((1, 2)) == [1, 2, 2, 2, 2]
    fmap = torch.arange(16.0).view(1, 1, 4, 4)
    regions = pool_regions(fmap, (1, 2, 4))[0, 0]
    assert regions[0] == fmap.mean()
    assert regions[1:5].tolist() == [2.5, 4.5, 10.5, 12.5]            # row-major 2x2 cells
    assert regions[5:].tolist() == list(range(16))                     # the 4x4 cells themselves


def authors_regions(fmap, scales):
    """The authors' SPP rule, stated plainly: 16 cells of a 4x4 grid, cell (i, j) the mean of rows
    floor(i*H/4) .. ceil((i+1)*H/4)-1 and the same for columns (adaptive pooling bins); a 2x2 cell
    is the mean of its four 4x4 cells; the 1x1 region the mean of all sixteen. Scales ascending,
    row-major."""
    B, C, H, W = fmap.shape
    rows = [(i * H // 4, -(-(i + 1) * H // 4)) for i in range(4)]
    cols = [(j * W // 4, -(-(j + 1) * W // 4)) for j in range(4)]
    cell = [[fmap[:, :, r0:r1, c0:c1].mean((2, 3)) for (c0, c1) in cols] for (r0, r1) in rows]
    out = {4: [cell[i][j] for i in range(4) for j in range(4)],
           2: [sum(cell[2 * a + u][2 * b + v] for u in (0, 1) for v in (0, 1)) / 4 for a in (0, 1) for b in (0, 1)],
           1: [sum(cell[i][j] for i in range(4) for j in range(4)) / 16]}
    return torch.stack([region for s in scales for region in out[s]], dim=2)


@pytest.mark.parametrize("size", [7, 14, 8, 5])
@pytest.mark.parametrize("scales", [(1,), (1, 2), (1, 2, 4)])
def test_pooling_follows_the_authors_rule_for_every_m(scales, size):
    fmap = torch.randn(2, 3, size, size, dtype=torch.float64)
    assert torch.allclose(pool_regions(fmap, scales), authors_regions(fmap, scales), atol=1e-12)


def test_m_1_2_on_7x7_and_14x14_maps_is_not_a_direct_2x2_pooling():
    """The bins of the 4x4 grid overlap on a 7x7 map and are uneven on 14x14, so pooling 2x2 straight
    from the map (the previous behaviour for M=[1,2]) gives other regions, and M=[1]'s region is
    not the global mean there."""
    for size in (7, 14):
        fmap = torch.randn(2, 3, size, size)
        regions = pool_regions(fmap, (1, 2))
        assert not torch.allclose(regions[..., 1:], F.adaptive_avg_pool2d(fmap, 2).flatten(2))
        assert not torch.allclose(pool_regions(fmap, (1,))[..., 0], fmap.mean((2, 3)))
        assert torch.equal(regions, pool_regions(fmap, (1, 2, 4))[..., :5])   # the same regions for every M
    fmap = torch.randn(2, 3, 8, 8)                                     # multiples of 4: the plain means
    assert torch.allclose(pool_regions(fmap, (1,))[..., 0], fmap.mean((2, 3)), atol=1e-6)


def cell_means(fmap, s):
    """The s x s cells of a map, each the plain mean of its rows floor(i*H/s) .. ceil((i+1)*H/s)-1 (and columns
    alike), row-major: B x C x s*s."""
    H, W = fmap.shape[-2:]
    rows = [(i * H // s, -(-(i + 1) * H // s)) for i in range(s)]
    cols = [(j * W // s, -(-(j + 1) * W // s)) for j in range(s)]
    return torch.stack([fmap[:, :, r0:r1, c0:c1].mean((2, 3)) for r0, r1 in rows for c0, c1 in cols], dim=2)


@pytest.mark.parametrize("size", [6, 8])     # 3 divides 6 (disjoint cells); on 8 its cells share a row/column
def test_m_1_2_3_region_logits_are_the_head_on_each_cells_average(size):
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(2, 3, size, size)
    logits, regions = ScaleDecoupled(model, "[1,2,3]")(x)
    fmap = model.forward_features(x)
    cells = torch.cat([cell_means(fmap, s) for s in (1, 2, 3)], dim=2)            # B x C x 14
    expected = torch.stack([model.fc(cells[:, :, n]) for n in range(cells.shape[2])], dim=2)
    assert regions.shape == (2, 7, 14) and torch.allclose(regions, expected, atol=1e-6)
    assert torch.allclose(regions[..., 0], logits, atol=1e-6)


def test_m_outside_the_papers_three_pools_each_scale_from_the_map():
    fmap = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    regions = pool_regions(fmap, (1, 2, 4, 7))
    assert torch.allclose(regions[..., 1:5], cell_means(fmap, 2), atol=1e-12)    # not the 2x2 of a 4x4 pool
    assert not torch.allclose(regions[..., 1:5], pool_regions(fmap, (1, 2))[..., 1:], atol=1e-6)
    assert torch.equal(regions[..., 21:], fmap.flatten(2))                           # 7x7 on a 7x7 map: the cells
    with pytest.raises(ValueError, match=r"^M=\[1,2,8\] asks for a 8x8 grid, but the feature map is 7x7; use "
                                         r"scales no larger than 7, or larger images\.$"):
        pool_regions(fmap, (1, 2, 8))


def test_run_names_tell_every_m_apart():
    name = lambda m: RunConfig.from_params({"dataset": "digit_mosaic", "method": "kd", "M": m}).name  # noqa: E731
    assert name("[1,2,4]") == "resnet14-resnet8-sd_kd-M124-seed0" and name("[1]").endswith("-kd-M1-seed0")
    assert name("[1,2,4,8]").endswith("-sd_kd-M1248-seed0")
    assert scales_tag((1, 2, 12)) == "1_2_12" and scales_tag((1, 21)) == "1_21" and scales_tag((1, 2)) == "12"
    assert len({scales_tag(m) for m in ((1, 2, 12), (1, 21), (1, 2, 11), (1, 211), (1, 2, 3))}) == 5


def test_a_scale_larger_than_the_feature_map_is_refused_before_training(tmp_path, mosaic_dir):
    assert feature_grid(TinyNet(), 5) == (5, 5)
    params = {"dataset": "digit_mosaic", "method": "kd", "M": "[1,2,9]", "data_dir": str(mosaic_dir),
              "output_dir": str(tmp_path / "out"), "progress": False, "figures": False}
    with pytest.raises(ConfigError) as err:
        experiment.run(params)
    assert str(err.value) == ("M=[1,2,9] is finer than the 8x8 feature map of teacher resnet14 on 32x32 images: "
                              "use scales no larger than 8.")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.json"))


@pytest.mark.parametrize("scales", [(1,), (1, 2), (1, 2, 4)])
def test_wrapper_shapes_and_scale_one_equals_logits(scales):
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(3, 3, 8, 8)
    logits, regions = ScaleDecoupled(model, scales)(x)
    assert regions.shape == (3, 7, num_regions(scales))
    assert torch.equal(logits, model(x))
    assert torch.allclose(regions[..., 0], logits, atol=1e-6)


def test_wrapper_computes_the_feature_map_once():
    model = TinyNet()
    calls = []
    model.conv.register_forward_hook(lambda *a: calls.append(1))
    ScaleDecoupled(model)(torch.randn(1, 3, 8, 8))
    assert len(calls) == 1


@pytest.mark.slow  # builds torchvision's resnet18 and mobilenet_v2
@pytest.mark.parametrize("builder", ["resnet18", "mobilenet_v2"])
def test_wrapper_on_torchvision_models(builder):
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, builder)(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)                       # 2x2 final map: pooling exact for scales (1, 2)
    with torch.no_grad():
        logits, regions = ScaleDecoupled(model, (1, 2))(x)
        expected = model(x)
    assert regions.shape == (2, 10, 5)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(regions[..., 0], expected, atol=1e-5)


def test_wrapper_on_a_timm_model():
    import timm
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5, pretrained=False).eval()
    x = torch.randn(2, 3, 128, 128)                     # 4x4 final map
    with torch.no_grad():
        logits, regions = ScaleDecoupled(model, "[1,2,4]")(x)
        expected = model(x)
    assert regions.shape == (2, 5, 21)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(regions[..., 0], expected, atol=1e-4)


def test_wrapper_rejects_models_without_the_interface():
    with pytest.raises(TypeError, match="has no forward_features.* add those two methods"):
        ScaleDecoupled(nn.Linear(3, 3))
