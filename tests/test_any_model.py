"""ScaleDecoupled on timm and torchvision classifiers beyond the paper's CNNs (issue 14): every region
is scored through the model's whole head. Tiny configurations on CPU, pretrained=False.

For each family the region logits are checked against the head written out by hand (the layers the
family's head applies after pooling), with regions pooled by the authors' rule (`authors_regions`)."""
import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from torch.utils.data import TensorDataset

from sddlib.distill import DistillationCallback
from sddlib.models import create_model
from sddlib.regions import ScaleDecoupled, model_num_classes
from test_regions import authors_regions

K = 5
SCALES = (1, 2, 4)


def _timm(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=K, pretrained=False, **kw).eval()


def _linear(layer):
    return lambda v: layer(v)


def _convnext_head(m):
    norm = m.head.norm
    return lambda v: m.head.fc(F.layer_norm(v, v.shape[-1:], norm.weight, norm.bias, norm.eps))


def _mobilenetv3_head(m):
    conv = m.conv_head
    return lambda v: m.classifier(F.hardswish(F.linear(v, conv.weight.flatten(1), conv.bias)))


# name -> (builder, the head by hand: C-vectors -> logits). 160 px gives 5x5 final maps, where the
# pool-of-4x4 rule matters; 128 px gives 4x4 maps.
CNNS = {
    "resnet18": (lambda: _timm("resnet18"), lambda m: _linear(m.fc)),
    "efficientnet_b0": (lambda: _timm("efficientnet_b0"), lambda m: _linear(m.classifier)),
    "regnetx_002": (lambda: _timm("regnetx_002"), lambda m: _linear(m.head.fc)),
    "convnext_atto": (lambda: _timm("convnext_atto"), _convnext_head),
    "mobilenetv3_small_100": (lambda: _timm("mobilenetv3_small_100"), _mobilenetv3_head),
    "tv_resnet18": (lambda: torchvision.models.resnet18(num_classes=K).eval(), lambda m: _linear(m.fc)),
    "tv_mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=K).eval(),
                        lambda m: _linear(m.classifier[1])),          # eval: its dropout is the identity
}


def _tv_features(m, x):
    if isinstance(m, torchvision.models.ResNet):
        return m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
    return m.features(x)


def _by_hand(m, fmap, head):
    regions = authors_regions(fmap, SCALES)                           # B x C x N
    return head(regions.transpose(1, 2)).transpose(1, 2)              # B x K x N


@pytest.mark.slow  # builds a timm or torchvision CNN and runs it at 128-160 px
@pytest.mark.parametrize("name", list(CNNS))
def test_cnn_regions_equal_the_head_by_hand(name):
    build, hand_head = CNNS[name]
    model = build()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        logits, regions = ScaleDecoupled(model, SCALES)(x)
        fmap = model.forward_features(x) if hasattr(model, "forward_features") else _tv_features(model, x)
        expected = _by_hand(model, fmap, hand_head(model))
        own = model(x)
    assert fmap.shape[-2:] == (5, 5)
    assert regions.shape == (2, K, 21)
    assert torch.equal(logits, own)
    assert torch.allclose(regions, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # builds a timm or torchvision CNN and runs it at 128-160 px
@pytest.mark.parametrize("name", list(CNNS))
def test_cnn_global_region_equals_the_model_on_4x4_maps(name):
    model = CNNS[name][0]()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        logits, regions = ScaleDecoupled(model, SCALES)(x)
        own = model(x)
    assert torch.allclose(regions[..., 0], own, atol=1e-5, rtol=1e-4)


def test_head_dropout_follows_the_models_mode():
    model = _timm("convnext_atto", drop_rate=0.5)
    sd, x = ScaleDecoupled(model, SCALES), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eval_runs = [sd(x)[1] for _ in range(2)]
        model.train()
        train_runs = [sd(x)[1] for _ in range(2)]
    assert torch.equal(*eval_runs) and not torch.equal(*train_runs)


def _tiny_swin(**kw):
    return _timm("swin_tiny_patch4_window7_224", img_size=128, window_size=4, embed_dim=24,
                 depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), **kw)


def test_swin_channels_last_map():
    model = _tiny_swin()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        logits, regions = ScaleDecoupled(model, SCALES)(x)
        fmap = model.forward_features(x)                              # B x H x W x C
        expected = _by_hand(model, fmap.permute(0, 3, 1, 2), _linear(model.head.fc))
        own = model(x)
    assert fmap.shape[1:3] == (4, 4) and fmap.shape[-1] == model.num_features
    assert torch.equal(logits, own)
    assert torch.allclose(regions, expected, atol=1e-5)
    assert torch.allclose(regions[..., 0], own, atol=1e-5)


def _patch_grid(model, x):
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
    h, w = model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)


@pytest.mark.parametrize("name,prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_patch16_224", 1),
                                         ("deit_tiny_distilled_patch16_224", 2)])
def test_class_token_transformers(name, prefix):
    """Regions are patch-token means scored by the head the class token goes through; the global
    region is the model's own (class-token) logit; class and distillation tokens are not in the grid."""
    model = _timm(name, img_size=128, depth=1)
    x = torch.randn(2, 3, 128, 128)
    if prefix == 2:
        head = lambda v: (model.head(v) + model.head_dist(v)) / 2    # noqa: E731  DeiT's eval read-out
    else:
        head = _linear(model.head)
    with torch.no_grad():
        logits, regions = ScaleDecoupled(model, SCALES)(x)
        expected = _by_hand(model, _patch_grid(model, x), head)
        own = model(x)
    assert model.num_prefix_tokens == prefix and model.global_pool == "token"
    assert torch.equal(logits, own) and torch.equal(regions[..., 0], own)
    assert torch.allclose(regions[..., 1:], expected[..., 1:], atol=1e-5)


def test_distilled_deit_in_training():
    """timm's distilled DeiT: plain training scores every region with the mean of its two heads, as its
    prediction does; distilled_training=True (separate class and distillation logits) is refused."""
    model = _timm("deit_tiny_distilled_patch16_224", img_size=64, depth=1).train()
    sd, x = ScaleDecoupled(model, SCALES), torch.randn(2, 3, 64, 64)
    logits, regions = sd(x)
    assert torch.equal(regions[..., 0], logits) and torch.allclose(logits, model(x), atol=1e-6)
    model.set_distilled_training(True)
    with pytest.raises(ValueError, match=r"returns 2 logit tensors .* call model.set_distilled_training\(False\)"):
        sd(x)
    with torch.no_grad():
        eval_logits, eval_regions = sd.eval()(x)
    assert eval_regions.shape == (2, K, 21) and torch.equal(eval_logits, model(x))   # eval: timm averages


def test_average_pooling_transformer_any_patch_grid():
    """A ViT without class token that averages its patch tokens (fc_norm after pooling), at a
    non-square input through dynamic_img_size: a 6x8 grid."""
    model = _timm("vit_tiny_patch16_224", depth=1, global_pool="avg", class_token=False, dynamic_img_size=True)
    norm = model.fc_norm
    head = lambda v: model.head(F.layer_norm(v, v.shape[-1:], norm.weight, norm.bias, norm.eps))  # noqa: E731
    for size in ((96, 128), (128, 128)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            logits, regions = ScaleDecoupled(model, SCALES)(x)
            expected = _by_hand(model, _patch_grid(model, x), head)
            own = model(x)
        assert torch.equal(logits, own)
        assert torch.allclose(regions, expected, atol=1e-5)
    assert torch.allclose(regions[..., 0], own, atol=1e-5)           # 128 px: an 8x8 grid


def test_hybrid_transformer_any_patch_grid():
    """A ResNet-stem hybrid ViT (stride 32 to its tokens) at 128x192: a 4x6 grid after the class token."""
    model = _timm("vit_tiny_r_s16_p8_224", depth=1, dynamic_img_size=True)
    x = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        logits, regions = ScaleDecoupled(model, SCALES)(x)
        grid = _patch_grid(model, x)
        expected = _by_hand(model, grid, _linear(model.head))
    assert grid.shape[-2:] == (4, 6) and model.num_prefix_tokens == 1
    assert torch.equal(regions[..., 0], logits)
    assert torch.allclose(regions[..., 1:], expected[..., 1:], atol=1e-5)


def test_registered_vit_students():
    for name in ("ViT_micro_p4", "DeiT_Tiny_p4", "ViT_micro_convstem"):
        model = create_model(name, num_classes=K).eval()
        with torch.no_grad():
            logits, regions = ScaleDecoupled(model, SCALES)(torch.randn(1, 3, 32, 32))
        assert regions.shape == (1, K, 21) and model_num_classes(model) == K
        assert model.patch_embed.grid_size == (8, 8)


class FlatFeatures(nn.Module):
    """A classifier whose forward_features already pools: nothing spatial is left."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, K)

    def forward_features(self, x):
        return x.mean((2, 3))

    def forward_head(self, v):
        return self.fc(v)


class OddTokens(FlatFeatures):
    """Five tokens, which form no grid."""

    def forward_features(self, x):
        return x.flatten(2)[:, :, :5].transpose(1, 2)

    def forward_head(self, t):
        return self.fc(t.mean(1))


@pytest.mark.parametrize("build,x,message", [
    (lambda: _timm("resnet18", global_pool="max"), torch.randn(1, 3, 64, 64), r"pools its features with 'max'.*global_pool='avg'"),
    (lambda: _timm("vit_tiny_patch16_224", img_size=64, depth=1, global_pool="map"), torch.randn(1, 3, 64, 64),
     r"pools its features with 'map'"),
    (lambda: _timm("vit_tiny_patch16_224", img_size=64, depth=1), torch.randn(1, 3, 32, 32),
     r"built for 64x64 inputs and got 32x32; build it with img_size=\(32, 32\) or dynamic_img_size=True"),
    (FlatFeatures, torch.randn(1, 3, 8, 8), r"returns shape \(1, 3\), which has no spatial positions"),
    (OddTokens, torch.randn(1, 3, 8, 8), r"returns 5 patch tokens, which form no grid"),
])
def test_models_that_cannot_be_decoupled_say_why(build, x, message):
    with pytest.raises(ValueError, match=message):
        ScaleDecoupled(build(), SCALES)(x)


def _dls(n=64, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[:, 0, :16] += y.view(-1, 1, 1).float()
    ds = TensorDataset(x, y)
    return DataLoaders(DataLoader(ds, bs=16, shuffle=True), DataLoader(ds, bs=32), device="cpu")


@pytest.mark.slow  # trains
@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_distillation_into_a_vit_student_end_to_end(method):
    """A real fastai Learner distils a CNN teacher (8x8 map) into a class-token ViT (8x8 token grid)."""
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=K)
    student = create_model("ViT_micro_p4", num_classes=K)
    cls_token = student.cls_token.detach().clone()
    cb = DistillationCallback(teacher, method=method, scales=SCALES, warmup_epochs=1)
    learn = Learner(_dls(), student, loss_func=nn.CrossEntropyLoss(), cbs=cb, lr=0.01)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    assert len(cb.history) == 1 and torch.isfinite(torch.tensor(cb.history[0]["distill"]))
    assert cb.region_counts.shape == (4, 21) and cb.region_counts.sum() == 64 * 21
    assert not torch.equal(student.cls_token, cls_token)               # the global term reaches the class token
    assert "forward" not in student.__dict__                           # the plain student is back
