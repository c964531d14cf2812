"""Tests of sddlib.models: checkpoint compatibility with the reference code, the reference forward
computation, the timm interface, the CUB-200 and torchvision variants, and input validation."""
import copy
import functools
import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

from sddlib.models import create_model, list_models
from sddlib.regions import ScaleDecoupled

CIFAR_NAMES = ("resnet8 resnet14 resnet20 resnet32 resnet44 resnet56 resnet110 resnet8x4 "
               "resnet32x4 ResNet18 ResNet50 wrn_16_1 wrn_16_2 wrn_40_1 wrn_40_2 vgg8 vgg11 vgg13 "
               "vgg16 vgg19 MobileNetV2 ShuffleV1 ShuffleV2").split()
VIT_NAMES = ["DeiT_Tiny_p4", "ViT_micro_p4", "ViT_micro_convstem"]   # timm transformers for 32px inputs (sddlib/models/vit.py)

# (channels, height, width) of forward_features on 32x32 inputs, as the reference computes it:
# CIFAR resnets/WRNs end at 8x8, ResNet18/50 and ShuffleV1/V2 at 4x4, VGG at 4x4 (its 4th pool
# only runs on 64px inputs), MobileNetV2 at 2x2 (stride-2 stem).
CIFAR_FMAP = {
    **{n: (64, 8, 8) for n in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44",
                               "resnet56", "resnet110", "wrn_16_1", "wrn_40_1")},
    "resnet8x4": (256, 8, 8), "resnet32x4": (256, 8, 8),
    "wrn_16_2": (128, 8, 8), "wrn_40_2": (128, 8, 8),
    "ResNet18": (512, 4, 4), "ResNet50": (2048, 4, 4),
    **{n: (512, 4, 4) for n in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "MobileNetV2": (1280, 2, 2), "ShuffleV1": (960, 4, 4), "ShuffleV2": (1024, 4, 4),
}

# CUB-200 variants: first conv weight shape, and the feature map on a 224x224 input.
CUB = {
    "resnet8x4": ("conv1.weight", (32, 3, 7, 7), (256, 28, 28)),
    "resnet32x4": ("conv1.weight", (32, 3, 7, 7), (256, 28, 28)),
    "ResNet50": ("conv1.weight", (64, 3, 7, 7), (2048, 14, 14)),
    "ShuffleV1": ("conv1.weight", (24, 3, 7, 7), (960, 14, 14)),
    "ShuffleV2": ("conv1.weight", (24, 3, 7, 7), (1024, 14, 14)),
    "MobileNetV2": ("conv1.0.weight", (16, 3, 7, 7), (1280, 7, 7)),
    "vgg8": ("block0.0.weight", (64, 3, 3, 3), (512, 28, 28)),
    "vgg13": ("block0.0.weight", (64, 3, 3, 3), (512, 28, 28)),
}
TORCHVISION = {"ResNet18": tvm.resnet18, "ResNet34": tvm.resnet34, "ResNet50": tvm.resnet50,
               "MobileNetV2": tvm.mobilenet_v2}


# The authors' checkpoint layouts ship with the package (a copy of shared/reference/cifar_state_dicts.json).
REF_PATH = Path(__file__).resolve().parents[1] / "sddlib" / "reference" / "cifar_state_dicts.json"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batch-2 forwards gain nothing from intra-op threads, and on a shared 2-core machine
    spinning OpenMP workers made this file several times slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def reference_shapes():
    return json.loads(REF_PATH.read_text())


@functools.lru_cache(maxsize=None)
def _cached(name, stem="cifar", num_classes=100):
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, stem=stem).eval()


def fresh(name, stem="cifar", num_classes=100):
    """A private copy, for tests that change weights."""
    return copy.deepcopy(_cached(name, stem, num_classes))


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics and affine terms, so eval-mode BN is not near-identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def images(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- registry / list


def test_list_models():
    assert sorted(list_models()) == sorted(CIFAR_NAMES + VIT_NAMES + ["ResNet34", "MobileNetV1"])
    assert sorted(list_models("cifar")) == sorted(CIFAR_NAMES + VIT_NAMES)
    assert sorted(list_models("torchvision")) == sorted([*TORCHVISION, "MobileNetV1"])
    assert set(CUB) <= set(list_models("cub"))
    assert set(list_models("cub")) <= set(CIFAR_NAMES)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_state_dict_matches_reference(name):
    ref = reference_shapes()[name]
    model = _cached(name)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_strict_load_of_reference_shaped_checkpoint(name):
    g = torch.Generator().manual_seed(1)
    checkpoint = {}
    for key, shape in reference_shapes()[name]["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            checkpoint[key] = torch.tensor(7)
        else:
            checkpoint[key] = torch.rand(shape, generator=g) + 0.5
    model = fresh(name)
    model.load_state_dict(checkpoint, strict=True)
    assert all(torch.equal(v, checkpoint[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- timm interface


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_timm_interface_on_cifar_inputs(name):
    model = _cached(name)
    x = images()
    with torch.no_grad():
        fmap = model.forward_features(x)
        logits = model(x)
        assert torch.equal(logits, model.forward_head(fmap))
    assert isinstance(logits, torch.Tensor)
    assert tuple(fmap.shape) == (2, *CIFAR_FMAP[name])
    assert logits.shape == (2, 100)
    head = model.get_classifier()
    linear = head if isinstance(head, nn.Linear) else head[-1]
    assert linear.in_features == fmap.shape[1] and linear.out_features == 100
    with torch.no_grad():  # the head is what maps the pooled vector to the logits
        assert torch.allclose(head(fmap.mean((2, 3))), logits, atol=1e-5)
    assert (fmap >= 0).all(), "the reference pools a post-ReLU map"


@pytest.mark.parametrize("name", ["resnet8", "ResNet18", "wrn_16_1", "vgg8", "MobileNetV2",
                                  "ShuffleV1", "ShuffleV2"])
def test_scale_decoupled_wrapper(name):
    wrapped = ScaleDecoupled(_cached(name), scales=(1, 2, 4))
    with torch.no_grad():
        logits, regions = wrapped(images())
        assert torch.allclose(logits, _cached(name)(images()), atol=1e-6)
    assert regions.shape == (2, 100, 21)
    assert torch.allclose(regions[:, :, 0], logits, atol=1e-5)  # region 0 is the global one


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "MobileNetV2", "ShuffleV2"])
def test_trains_through_scale_decoupled(name):
    model = ScaleDecoupled(fresh(name).train(), scales=(1, 2))
    logits, regions = model(images())
    (logits.logsumexp(1).mean() + regions.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_num_classes_sets_the_head():
    model = create_model("resnet8", num_classes=10)
    assert model(images()).shape == (2, 10)
    assert model.get_classifier().out_features == 10


# --------------------------------------------------------------------------- reference forward
# Deliberately plain re-statements of the authors' forward passes, reading tensors by
# checkpoint key, so they also pin down what each key means.


def _bn(x, sd, key):
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"],
                        sd[f"{key}.weight"], sd[f"{key}.bias"], training=False, eps=1e-5)


def _conv(x, sd, key, stride=1):
    w = sd[f"{key}.weight"]
    return F.conv2d(x, w, sd.get(f"{key}.bias"), stride=stride, padding=w.shape[-1] // 2,
                    groups=x.shape[1] // w.shape[1])


def _linear(x, sd, key):
    return x @ sd[f"{key}.weight"].t() + sd[f"{key}.bias"]


def _shuffle(x, groups):
    """Channel shuffle as an explicit index list: output k*g + j takes input j*(C/g) + k."""
    per_group = x.shape[1] // groups
    order = [j * per_group + k for k in range(per_group) for j in range(groups)]
    return x[:, order]


def ref_cifar_resnet(sd, x, blocks):
    x = F.relu(_bn(_conv(x, sd, "conv1"), sd, "bn1"))
    for s in (1, 2, 3):
        for b in range(blocks):
            p, stride = f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1
            out = F.relu(_bn(_conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
            out = _bn(_conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(_conv(x, sd, f"{p}.downsample.0", stride), sd, f"{p}.downsample.1")
            x = F.relu(out + x)
    return x, _linear(F.avg_pool2d(x, 8).flatten(1), sd, "fc")


def ref_resnetv2(sd, x, blocks):
    x = F.relu(_bn(_conv(x, sd, "conv1"), sd, "bn1"))
    for s in (1, 2, 3, 4):
        for b in range(blocks[s - 1]):
            p, stride = f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1
            if f"{p}.conv3.weight" in sd:  # bottleneck: stride on the 3x3
                out = F.relu(_bn(_conv(x, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
                out = F.relu(_bn(_conv(out, sd, f"{p}.conv2", stride), sd, f"{p}.bn2"))
                out = _bn(_conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3")
            else:
                out = F.relu(_bn(_conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
                out = _bn(_conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
            if f"{p}.shortcut.0.weight" in sd:
                x = _bn(_conv(x, sd, f"{p}.shortcut.0", stride), sd, f"{p}.shortcut.1")
            x = F.relu(out + x)
    return x, _linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "linear")


def ref_wrn(sd, x, blocks):
    x = _conv(x, sd, "conv1")
    for s in (1, 2, 3):
        for b in range(blocks):
            p, stride = f"block{s}.layer.{b}", 2 if s > 1 and b == 0 else 1
            if f"{p}.convShortcut.weight" in sd:  # the input itself is replaced by BN-ReLU(x)
                x = F.relu(_bn(x, sd, f"{p}.bn1"))
                out = F.relu(_bn(_conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn2"))
                x = _conv(x, sd, f"{p}.convShortcut", stride) + _conv(out, sd, f"{p}.conv2")
            else:
                out = F.relu(_bn(x, sd, f"{p}.bn1"))
                out = F.relu(_bn(_conv(out, sd, f"{p}.conv1", stride), sd, f"{p}.bn2"))
                x = x + _conv(out, sd, f"{p}.conv2")
    x = F.relu(_bn(x, sd, "bn1"))
    return x, _linear(F.avg_pool2d(x, 8).flatten(1), sd, "fc")


def ref_vgg(sd, x, layers_per_block):
    height = x.shape[2]
    for i, n in enumerate(layers_per_block):
        for j in range(n):  # Sequential indices: conv 3j, BN 3j+1, ReLU 3j+2 (last one dropped)
            x = _bn(_conv(x, sd, f"block{i}.{3 * j}"), sd, f"block{i}.{3 * j + 1}")
            x = F.relu(x)
        if i < 3 or (i == 3 and height == 64):
            x = F.max_pool2d(x, 2, 2)
    return x, _linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd, "classifier")


def ref_mobilenetv2(sd, x):
    x = F.relu(_bn(_conv(x, sd, "conv1.0", 2), sd, "conv1.1"))
    # (expansion t, output channels at width 0.5, blocks, first stride)
    stages = [(1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1),
              (6, 80, 3, 2), (6, 160, 1, 1)]
    for s, (t, c, n, first_stride) in enumerate(stages):
        for b in range(n):
            p, stride = f"blocks.{s}.{b}.conv", first_stride if b == 0 else 1
            assert sd[f"{p}.0.weight"].shape[:2] == (t * x.shape[1], x.shape[1])
            h = F.relu(_bn(_conv(x, sd, f"{p}.0"), sd, f"{p}.1"))          # expand, ReLU
            h = F.relu(_bn(_conv(h, sd, f"{p}.3", stride), sd, f"{p}.4"))  # depthwise, ReLU
            h = _bn(_conv(h, sd, f"{p}.6"), sd, f"{p}.7")                  # project, linear
            assert h.shape[1] == c
            x = x + h if stride == 1 and x.shape[1] == c else h
    x = F.relu(_bn(_conv(x, sd, "conv2.0"), sd, "conv2.1"))
    return x, _linear(F.avg_pool2d(x, 2, ceil_mode=True).flatten(1), sd, "classifier.0")


def ref_shufflev1(sd, x):
    x = F.relu(_bn(_conv(x, sd, "conv1"), sd, "bn1"))
    for s, n in zip((1, 2, 3), (4, 8, 4)):
        for b in range(n):
            p, stride = f"layer{s}.{b}", 2 if b == 0 else 1
            groups = 1 if s == 1 and b == 0 else 3
            out = F.relu(_bn(_conv(x, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
            assert x.shape[1] // sd[f"{p}.conv1.weight"].shape[1] == groups
            out = _shuffle(out, groups)
            out = F.relu(_bn(_conv(out, sd, f"{p}.conv2", stride), sd, f"{p}.bn2"))
            out = _bn(_conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3")
            if b == 0:
                x = F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
            else:
                x = F.relu(out + x)
    return x, _linear(F.avg_pool2d(x, 4).flatten(1), sd, "linear")


def ref_shufflev2(sd, x):
    x = F.relu(_bn(_conv(x, sd, "conv1"), sd, "bn1"))
    for s, n in zip((1, 2, 3), (3, 7, 3)):
        p = f"layer{s}.0"
        left = _bn(_conv(x, sd, f"{p}.conv1", 2), sd, f"{p}.bn1")
        left = F.relu(_bn(_conv(left, sd, f"{p}.conv2"), sd, f"{p}.bn2"))
        right = F.relu(_bn(_conv(x, sd, f"{p}.conv3"), sd, f"{p}.bn3"))
        right = _bn(_conv(right, sd, f"{p}.conv4", 2), sd, f"{p}.bn4")
        right = F.relu(_bn(_conv(right, sd, f"{p}.conv5"), sd, f"{p}.bn5"))
        x = _shuffle(torch.cat([left, right], 1), 2)
        for b in range(1, n + 1):
            p, half = f"layer{s}.{b}", x.shape[1] // 2
            kept, out = x[:, :half], x[:, half:]
            out = F.relu(_bn(_conv(out, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
            out = _bn(_conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
            out = F.relu(_bn(_conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3"))
            x = _shuffle(torch.cat([kept, out], 1), 2)
    x = F.relu(_bn(_conv(x, sd, "conv2"), sd, "bn2"))
    return x, _linear(F.avg_pool2d(x, 4).flatten(1), sd, "linear")


REFERENCE_FORWARDS = {
    "resnet8x4": functools.partial(ref_cifar_resnet, blocks=1),
    "resnet20": functools.partial(ref_cifar_resnet, blocks=3),
    "ResNet18": functools.partial(ref_resnetv2, blocks=(2, 2, 2, 2)),
    "ResNet50": functools.partial(ref_resnetv2, blocks=(3, 4, 6, 3)),
    "wrn_16_2": functools.partial(ref_wrn, blocks=2),
    "wrn_16_1": functools.partial(ref_wrn, blocks=2),
    "vgg8": functools.partial(ref_vgg, layers_per_block=(1, 1, 1, 1, 1)),
    "vgg13": functools.partial(ref_vgg, layers_per_block=(2, 2, 2, 2, 2)),
    "MobileNetV2": ref_mobilenetv2,
    "ShuffleV1": ref_shufflev1,
    "ShuffleV2": ref_shufflev2,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_FORWARDS))
def test_forward_equals_reference_computation(name):
    model = randomize_bn(fresh(name))
    sd = model.state_dict()
    x = images()
    with torch.no_grad():
        ref_fmap, ref_logits = REFERENCE_FORWARDS[name](sd, x)
        fmap, logits = model.forward_features(x), model(x)
    torch.testing.assert_close(fmap, ref_fmap, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)


def test_vgg_fourth_pool_only_on_64px_inputs():
    """The reference's `if h == 64` rule: 64px inputs also end in a 4x4 map."""
    model = randomize_bn(fresh("vgg8"))
    x = images(n=1, size=64)
    with torch.no_grad():
        fmap = model.forward_features(x)
        ref_fmap, ref_logits = ref_vgg(model.state_dict(), x, (1, 1, 1, 1, 1))
        torch.testing.assert_close(model(x), ref_logits, rtol=1e-4, atol=1e-5)
    assert fmap.shape[-2:] == (4, 4)
    torch.testing.assert_close(fmap, ref_fmap, rtol=1e-4, atol=1e-5)


def test_channel_shuffle_order():
    from sddlib.models.shufflenetv1 import channel_shuffle
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_wrn_projection_reads_activated_input():
    """Changing bn1 of a projecting block must change the shortcut path too."""
    block = fresh("wrn_16_2").block1.layer[0].eval()
    x = images(n=1, size=8)[:, :1].repeat(1, 16, 1, 1)
    with torch.no_grad():
        before = block(x)
        block.bn1.bias.add_(1.0)
        after = block(x)
        block.conv2.weight.zero_()  # only the shortcut remains
        shortcut = block(x)
        expected = block.convShortcut(F.relu(block.bn1(x)))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(shortcut, expected)


# --------------------------------------------------------------------------- CUB-200


@pytest.mark.parametrize("name", sorted(CUB))
def test_cub_variant(name):
    stem_key, stem_shape, fmap_shape = CUB[name]
    model = _cached(name, "cub", 200)
    sd = model.state_dict()
    assert tuple(sd[stem_key].shape) == stem_shape
    # Apart from the stem conv and the 200-way head, the keys and shapes are the CIFAR ones.
    cifar = reference_shapes()[name]["state_dict"]
    assert set(sd) == set(cifar)
    changed = {k for k in sd if list(sd[k].shape) != cifar[k]}
    head_keys = {k for k in sd if k.startswith(model.classifier_attr + ".")}
    assert changed == head_keys | ({stem_key} if stem_shape[-1] == 7 else set())
    with torch.no_grad():
        fmap = model.forward_features(images(n=1, size=224))
        logits = model.forward_head(fmap)
    assert tuple(fmap.shape) == (1, *fmap_shape)
    assert logits.shape == (1, 200)


def test_cub_mobilenetv2_stem_layers():
    stem = _cached("MobileNetV2", "cub", 200).conv1
    assert isinstance(stem[0], nn.Conv2d) and stem[0].stride == (2, 2)
    assert stem[0].padding == (3, 3) and not stem[0].bias
    assert isinstance(stem[1], nn.BatchNorm2d) and isinstance(stem[2], nn.ReLU)
    assert isinstance(stem[3], nn.MaxPool2d) and stem[3].kernel_size == 2 and stem[3].stride == 2


@pytest.mark.parametrize("name", ["resnet8x4", "ResNet50", "ShuffleV1", "ShuffleV2"])
def test_cub_stem_conv_is_7x7_stride_2(name):
    conv = _cached(name, "cub", 200).conv1
    assert conv.kernel_size == (7, 7) and conv.stride == (2, 2) and conv.padding == (3, 3)
    assert conv.bias is None


# The layers the authors' CUB-200 code replaces with fresh torch modules after building the CIFAR network
# (train_origin.py: modify_student_model_for_cub200, modify_teacher_model_for_cub200), so they keep torch's
# default initialisation; a layer it keeps, with the CIFAR network's own He (fan-out) initialisation.
CUB_REPLACED = {"resnet8x4": (["conv1", "fc"], "layer1.0.conv1"), "resnet32x4": (["conv1", "fc"], "layer1.0.conv1"),
                "ResNet50": (["conv1", "linear"], "layer1.0.conv2"), "ShuffleV1": (["conv1"], None),
                "ShuffleV2": (["conv1"], None), "MobileNetV2": (["conv1.0", "conv1.1"], "conv2.0"),
                "vgg8": (["classifier"], "block1.0"), "vgg13": (["classifier"], "block1.0")}


def _is_torch_default(layer) -> bool:
    """torch's reset_parameters: weights (and biases) uniform within 1/sqrt(fan_in); BatchNorm 1 and 0."""
    if isinstance(layer, nn.BatchNorm2d):
        return bool((layer.weight == 1).all() and (layer.bias == 0).all())
    w = layer.weight.detach()
    bound = 1 / (w[0].numel() ** 0.5)
    uniform = w.abs().max() <= bound and abs(w.std() / (bound / 3 ** 0.5) - 1) < 0.1
    return bool(uniform and (layer.bias is None or (layer.bias.abs().max() <= bound and layer.bias.abs().sum() > 0)))


def _is_he_fan_out(layer) -> bool:
    w = layer.weight.detach()
    return abs(w.std() / (2 / (w.shape[0] * w[0, 0].numel())) ** 0.5 - 1) < 0.1


@pytest.mark.parametrize("name", sorted(CUB_REPLACED))
def test_cub_layers_the_authors_replace_keep_torch_default_init(name):
    replaced, kept = CUB_REPLACED[name]
    model = create_model(name, num_classes=200, stem="cub")
    layers = dict(model.named_modules())
    for layer in replaced:
        assert _is_torch_default(layers[layer]), layer
    if kept is not None:   # the rest keeps the CIFAR network's initialisation, and so does the CIFAR stem
        assert _is_he_fan_out(layers[kept]) and not _is_torch_default(layers[kept])
        cifar_stem = dict(create_model(name, num_classes=100).named_modules())[replaced[0]]
        assert not _is_torch_default(cifar_stem) or isinstance(cifar_stem, nn.Linear)


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models(name):
    model = _cached(name, "torchvision", 1000)
    reference = TORCHVISION[name]().eval()
    assert isinstance(model, type(reference))
    ours = model.state_dict()
    assert {k: v.shape for k, v in ours.items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    reference.load_state_dict(ours, strict=True)
    x = images(n=1, size=32)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, reference(x))
        torch.testing.assert_close(logits, model.forward_head(model.forward_features(x)))
    assert logits.shape == (1, 1000)
    assert model.get_classifier() is (model.fc if hasattr(model, "fc") else model.classifier)


def test_torchvision_weights_missing_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(RuntimeError) as err:
            create_model("ResNet18", num_classes=1000, stem="torchvision",
                         weights="IMAGENET1K_V1", progress=False)
    finally:
        torch.hub.set_dir(old_dir)
    msg = str(err.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in msg
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "torch.hub.get_dir()" in msg and "\n" not in msg


def test_torchvision_weights_loaded_from_hub_cache(tmp_path, monkeypatch):
    weights = tvm.MobileNet_V2_Weights.IMAGENET1K_V1
    source = tvm.mobilenet_v2()
    cache = tmp_path / "checkpoints"
    cache.mkdir()
    torch.save(source.state_dict(), cache / Path(weights.url).name)
    def no_download(*args, **kwargs):
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        model = create_model("MobileNetV2", num_classes=1000, stem="torchvision",
                             weights=weights, progress=False)
    finally:
        torch.hub.set_dir(old_dir)
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert hasattr(model, "forward_features")


def test_torchvision_bad_weights_arguments():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        create_model("ResNet34", num_classes=1000, stem="torchvision", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="num_classes must be 1000"):
        create_model("ResNet34", num_classes=100, stem="torchvision", weights="IMAGENET1K_V1")


# --------------------------------------------------------------------------- MobileNetV1 (ImageNet)
# The authors' layout, restated: conv_bn(3, 32, stride 2), then 13 depthwise-separable blocks
# (output width, stride); every conv without bias; fc 1024 -> classes.
MOBILENETV1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                      (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def mobilenetv1_layout(num_classes=1000) -> dict:
    """state-dict key -> shape of the authors' `mdistiller/models/imagenet/mobilenetv2.py` (a MobileNetV1)."""
    def bn(key, c):
        return {f"{key}.weight": (c,), f"{key}.bias": (c,), f"{key}.running_mean": (c,),
                f"{key}.running_var": (c,), f"{key}.num_batches_tracked": ()}
    layout = {"model.0.0.weight": (32, 3, 3, 3), **bn("model.0.1", 32)}
    in_ch = 32
    for i, (out_ch, _) in enumerate(MOBILENETV1_BLOCKS, start=1):
        layout.update({f"model.{i}.0.weight": (in_ch, 1, 3, 3), **bn(f"model.{i}.1", in_ch),
                       f"model.{i}.3.weight": (out_ch, in_ch, 1, 1), **bn(f"model.{i}.4", out_ch)})
        in_ch = out_ch
    return {**layout, "fc.weight": (num_classes, 1024), "fc.bias": (num_classes,)}


def ref_mobilenetv1(sd, x):
    """Their forward: conv-BN-ReLU blocks, AvgPool2d(7) (224x224 inputs only), fc."""
    x = F.relu(_bn(_conv(x, sd, "model.0.0", 2), sd, "model.0.1"))
    for i, (_, stride) in enumerate(MOBILENETV1_BLOCKS, start=1):
        x = F.relu(_bn(_conv(x, sd, f"model.{i}.0", stride), sd, f"model.{i}.1"))
        x = F.relu(_bn(_conv(x, sd, f"model.{i}.3"), sd, f"model.{i}.4"))
    return x, _linear(F.avg_pool2d(x, 7).flatten(1), sd, "fc")


def test_mobilenetv1_has_the_authors_layout():
    model = _cached("MobileNetV1", "torchvision", 1000)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == mobilenetv1_layout()
    assert sum(p.numel() for p in model.parameters()) == 4_231_976
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27 and all(c.bias is None for c in convs)
    assert [c.stride[0] for c in convs[1::2]] == [s for _, s in MOBILENETV1_BLOCKS]  # on the depthwise convs
    assert model.get_classifier() is model.fc and model.num_features == 1024
    assert create_model("MobileNetV1", num_classes=200, stem="torchvision").fc.out_features == 200


def test_mobilenetv1_loads_an_authors_checkpoint_and_computes_their_forward():
    g = torch.Generator().manual_seed(3)
    checkpoint = {k: torch.tensor(9) if not shape else torch.rand(shape, generator=g) + 0.5
                  for k, shape in mobilenetv1_layout().items()}
    for k in checkpoint:  # keep activations in range through 14 blocks
        if k.endswith(".weight") and checkpoint[k].dim() == 4:
            checkpoint[k] = (checkpoint[k] - 0.5) * 2 / checkpoint[k][0].numel() ** 0.5
    model = fresh("MobileNetV1", "torchvision", 1000)
    model.load_state_dict(checkpoint, strict=True)
    assert all(torch.equal(v, checkpoint[k]) for k, v in model.state_dict().items())
    x = images(n=1, size=224)
    with torch.no_grad():
        fmap, logits = model.forward_features(x), model(x)
        ref_fmap, ref_logits = ref_mobilenetv1(checkpoint, x)
        assert torch.equal(logits, model.forward_head(fmap))
    assert tuple(fmap.shape) == (1, 1024, 7, 7) and logits.shape == (1, 1000)
    torch.testing.assert_close(fmap, ref_fmap)
    torch.testing.assert_close(logits, ref_logits)


def test_mobilenetv1_with_scale_decoupled():
    model = _cached("MobileNetV1", "torchvision", 1000)
    x = images(n=1, size=224)
    with torch.no_grad():
        logits, regions = ScaleDecoupled(model, scales=(1, 2, 4))(x)
        torch.testing.assert_close(logits, model(x))
    assert regions.shape == (1, 1000, 21)
    torch.testing.assert_close(regions[:, :, 0], logits)
    with torch.no_grad():  # on other input sizes the head still pools the whole map
        fmap = model.forward_features(images(n=1, size=160))
    assert tuple(fmap.shape) == (1, 1024, 5, 5)
    torch.testing.assert_close(model.forward_head(fmap), model.fc(fmap.mean((2, 3))))


@pytest.mark.parametrize("stem", ["cifar", "cub"])
def test_mobilenetv1_is_imagenet_only(stem):
    with pytest.raises(ValueError, match="torchvision") as err:
        create_model("MobileNetV1", num_classes=100, stem=stem)
    _one_sentence(err)
    with pytest.raises(ValueError, match="weights") as err:  # no published weights to load
        create_model("MobileNetV1", num_classes=1000, stem="torchvision", weights="IMAGENET1K_V1")
    _one_sentence(err)


# --------------------------------------------------------------------------- rejected input


def _one_sentence(err):
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(".") and ". " not in msg[:-1], msg
    return msg


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError) as err:
        create_model("resnet33")
    msg = _one_sentence(err)
    assert "resnet32" in msg and "list_models()" in msg
    with pytest.raises(ValueError, match="ResNet50"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="list_models"):
        create_model("transformer_xxl")


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True, "100"])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes") as err:
        create_model("resnet8", num_classes=bad)
    _one_sentence(err)


def test_unknown_stem_lists_accepted_ones():
    with pytest.raises(ValueError) as err:
        create_model("resnet8", stem="imagenet")
    msg = _one_sentence(err)
    assert all(s in msg for s in ("'cifar'", "'cub'", "'torchvision'"))
    with pytest.raises(ValueError, match="stem"):
        list_models("imagenet")


def test_name_without_that_stem():
    with pytest.raises(ValueError, match="wrn_40_2") as err:
        create_model("wrn_40_2", num_classes=200, stem="cub")
    assert "resnet32x4" in _one_sentence(err)
    with pytest.raises(ValueError, match="torchvision") as err:
        create_model("ResNet34")
    _one_sentence(err)
    with pytest.raises(ValueError, match="torchvision"):
        create_model("resnet8", stem="torchvision")


def test_unexpected_keyword():
    with pytest.raises(ValueError, match="weights") as err:
        create_model("resnet8", weights="IMAGENET1K_V1")
    _one_sentence(err)
