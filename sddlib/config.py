"""The typed run configuration: every parameter of a run with its type, range and meaning, checked
once, before any data is loaded or a teacher trained.

`RunConfig.from_params(dict)` turns a notebook's parameters cell or a params/ file into a frozen
`RunConfig`: unknown keys get "did you mean", every value is checked against its range, `None`
values become the dataset's protocol or the method's defaults (the authors' values), and M is
parsed once into `scales`. `check_environment()` then checks what lives outside the process:
the dataset folder, the output folder, the teacher checkpoint. Every problem is one sentence
(`ConfigError`) naming the parameter, its value and what is accepted.

A `RunConfig` also reads like the flat dict it replaces (`cfg["lr"]`, `{**cfg, "seed": 1}`), so
notebooks and params files keep working unchanged.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.build import PIPELINES
from .data.folder import AUGMENTS, NORMALIZE
from . import loss_family  # noqa: F401  (registers ttm, wttm, rld, abkd wherever a run is checked)
from .data.memory import DEFAULT_MEMORY_BUDGET
from .data.spec import DATASETS, DatasetLayoutError, DatasetSpec
from .losses import LOSSES, LogitLoss
from .regions import COMPLEMENTARY_WEIGHT, parse_scales

__all__ = ["ConfigError", "parse_list", "METHODS", "LOSS_FIELDS", "OPTIMIZERS", "RunConfig",
           "PARAMETERS", "DEFAULTS", "teacher_file_in"]


class ConfigError(ValueError):
    """A parameter that cannot give the run the user asked for (one sentence: what, value, accepted)."""


# The distillation methods: every registered logit loss (sddlib.losses.register_loss), with its authors' defaults.
METHODS = LOSSES
# Loss hyper-parameters that are RunConfig fields of their own (the built-in losses'); any other one of a
# registered loss goes in `loss_params`.
LOSS_FIELDS = ("T", "alpha", "beta", "gamma", "exclude_target")

# How a folder's images are held (memory or files, `sddlib.data.memory`): folder-only, and outside the teacher
# protocol and the data options a run's records compare (where the images are held does not change the recipe).
MEMORY_OPTIONS = {"in_memory": "auto", "memory_budget": DEFAULT_MEMORY_BUDGET}


def _in_memory(name, value):
    if isinstance(value, str) and value.lower() in ("true", "false"):   # -p in_memory false from the command line
        value = value.lower() == "true"
    if value != "auto" and not isinstance(value, bool):
        _fail(name, value, "'auto', True or False")
    return value


# Speed switches (sddlib.acceleration): autocast precisions and torch.compile modes.
PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# "sgd" is the paper's solver; "adamw" is for students that SGD does not train from scratch in a short schedule.
OPTIMIZERS = ("sgd", "adamw")
# Run trackers (sddlib.tracking), opt-in.
TRACKERS = ("tensorboard", "wandb")
# A teacher trained here always uses this seed: the cached teacher must not depend on which run came first.
TEACHER_SEED = 0


# --- value checks: each returns the normalised value or raises one sentence ---------------------------
def _fail(name, value, accepted):
    raise ConfigError(f"{name}={value!r} is not accepted; {name} must be {accepted}.")


def _number(name, value, accepted):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(name, value, accepted)
    return value


def _int(low=None, high=None, what=None):
    accepted = what or ("an integer" + (f" >= {low}" if low is not None else "")
                        + (f" and < {high}" if high is not None else ""))

    def check(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low) \
                or (high is not None and value >= high):
            _fail(name, value, accepted)
        return value
    return _accepts(accepted)(check)


def _float(low=None, high=None, low_open=False, high_open=False, what=None):
    accepted = what or "a finite number" + (f" {'>' if low_open else '>='} {low}" if low is not None else "") \
        + (f" and {'<' if high_open else '<='} {high}" if high is not None else "")

    def check(name, value):
        _number(name, value, accepted)
        if low is not None and (value < low or (low_open and value == low)):
            _fail(name, value, accepted)
        if high is not None and (value > high or (high_open and value == high)):
            _fail(name, value, accepted)
        return float(value)
    return _accepts(accepted)(check)


def _accepts(text):
    """Label a check with what it accepts (`python -m sddlib --params` shows it)."""
    def label(check):
        check.accepted = text
        return check
    return label


def _optional(check):
    @_accepts(check.accepted if check.accepted.startswith("None") else f"None or {check.accepted}")
    def optional(name, value):
        return None if value is None else check(name, value)
    return optional


@_accepts("text")


def _text(name, value):
    if not isinstance(value, str):
        _fail(name, value, "text")
    return value


@_accepts("True or False")
def _flag(name, value):
    if not isinstance(value, bool):
        _fail(name, value, "True or False")
    return value


_ITEMS = {int: "integers", str: "names"}


def parse_list(name: str, value, kind: type, example: str, *, nonempty: bool = False) -> list:
    """A list-valued parameter as a list of `kind`, from a list, a single value, or its text: papermill's `-p`
    and `python -m sddlib -p` pass text (`-p seeds '[0, 1]'`, `-p methods '["kd", "dkd"]'`), read as YAML here.
    The one place such text is parsed, for every notebook and the command line; one sentence when it is not
    a list of `kind` (`example` shows one)."""
    accepted = f"a {'non-empty ' if nonempty else ''}list of {_ITEMS[kind]} such as {example}"
    items = value
    if isinstance(value, str):
        try:
            items = yaml.safe_load(value)
        except yaml.YAMLError:
            _fail(name, value, accepted)
    if not isinstance(items, (list, tuple)):
        items = [items]
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in items) or (nonempty and not items):
        _fail(name, value, accepted)
    return list(items)


@_accepts("a list of increasing epochs such as [150, 180, 210]")
def _stages(name, value):
    accepted = "a list of increasing epochs such as [150, 180, 210]"
    if isinstance(value, str):   # papermill's -p gives "[150, 180]"
        try:
            value = parse_list(name, value, int, "[150, 180, 210]")
        except ConfigError:
            _fail(name, value, accepted)
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in value):
        _fail(name, value, accepted)
    if any(s < 1 for s in value) or any(b <= a for a, b in zip(value, value[1:])):
        _fail(name, value, accepted + " (each >= 1, strictly increasing)")
    return tuple(value)


@_accepts("'auto', 'cpu', 'cuda' or 'cuda:N'")
def _device(name, value):
    if value in ("auto", "cpu", "cuda") or (isinstance(value, str) and value.startswith("cuda:")
                                            and value[5:].isdigit()):
        return value
    _fail(name, value, "'auto', 'cpu', 'cuda' or 'cuda:N'")


@_accepts("empty or a plain folder name")
def _run_name(name, value):
    _text(name, value)
    if value and (Path(value).name != value or value in (".", "..")):
        _fail(name, value, "empty (named from the configuration) or a plain folder name without '/'")
    return value


@_accepts("a mapping of hyper-parameter names to values")
def _mapping(name, value):
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        _fail(name, value, "a mapping of hyper-parameter names to values, e.g. {'scale': 0.5}")
    return dict(value)


def _loss_value(method, key, value):
    try:
        return method.hyper[key].check(key, value)
    except ValueError as err:
        raise ConfigError(f"{err} (method {method.name})") from None


def _loss_params(method, given: dict, recipe: dict) -> dict:
    """`loss_params` of `method`: each given value checked, the others its defaults; the fields of their own refused."""
    own = [k for k in method.hyper if k not in LOSS_FIELDS]
    for key in given:
        if key not in own:
            where = (f"give {key} as a parameter of its own" if key in LOSS_FIELDS else
                     f"{method.name} takes {', '.join(own) if own else 'none'} there")
            raise ConfigError(f"loss_params key {key!r} is not accepted for method {method.name}; {where}.")
    return {k: _loss_value(method, k, given[k]) if k in given else recipe[k] for k in own}


def _choice(options):
    def check(name, value):
        if value not in options:
            close = difflib.get_close_matches(str(value), list(options), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ConfigError(f"{name} {value!r} is unknown{hint}; use one of {', '.join(sorted(options))}.")
        return value
    check.options = options   # a registry (datasets, losses) may grow after this check is made
    return check


@_accepts("'none', 'tensorboard', 'wandb' or a list of them")
def _trackers(name, value):
    """'none', one tracker or a list of them -> a tuple of tracker names (() for none)."""
    names = () if value in (None, "none") else parse_list(name, value, str, "['tensorboard', 'wandb']")
    for tracker in names:
        _choice(TRACKERS)(name, tracker)
    return tuple(dict.fromkeys(names))


def _imports(name, value):
    """`imports`: module names, imported here (`sddlib.custom_imports`) so that what they register is checked."""
    from .custom_imports import import_modules
    modules = tuple(parse_list(name, value, str, "['my_losses']"))
    try:
        import_modules(modules)
    except ImportError as err:
        raise ConfigError(str(err)) from None
    return modules


def _param(default, check, doc):
    return field(default=default, metadata={"check": check, "doc": doc})


_POSITIVE_INT = _int(low=1, what="a positive integer")
_WEIGHT = _optional(_float(low=0, what="a finite number >= 0"))
_TEMPERATURE = _optional(_float(low=0, low_open=True, what="a finite number > 0"))


@dataclass(frozen=True)
class RunConfig(Mapping):
    """One run, resolved. `None` in a field below means "the dataset's protocol / the method's default"
    only on input; after `from_params` every training value is concrete. Loss hyper-parameters the
    method does not use are None."""
    dataset: str = _param("cifar100", _choice(DATASETS), "cifar100, cub200, imagenet, digit_mosaic (demo), folder "
                          "(your own images) or a registered one (sddlib.data.spec)")
    teacher: str = _param(None, _optional(_text), "teacher architecture (sddlib.models.list_models)")
    student: str = _param(None, _optional(_text), "student architecture (sddlib.models.list_models)")
    method: str = _param("dkd", _choice(METHODS), "base distillation loss: kd, dkd, nkd or a registered one "
                         "(sddlib.losses.register_loss)")
    scales: tuple = _param((1, 2, 4), None, "M: region scales, [1] (plain method), [1,2] or [1,2,4]")
    epochs: int = _param(None, _optional(_POSITIVE_INT), "training epochs")
    batch_size: int = _param(None, _optional(_POSITIVE_INT), "images per step")
    lr: float = _param(None, _optional(_float(low=0, low_open=True, what="a finite number > 0")), "initial LR")
    lr_decay_stages: tuple = _param(None, _optional(_stages), "epochs after which the LR is multiplied by the rate")
    lr_decay_rate: float = _param(None, _optional(_float(low=0, high=1, low_open=True, what="a number in (0, 1]")),
                                  "LR multiplier at each stage")
    weight_decay: float = _param(None, _WEIGHT, "L2 weight decay on every parameter")
    momentum: float = _param(None, _optional(_float(low=0, high=1, high_open=True, what="a number in [0, 1)")),
                             "SGD momentum")
    ce_weight: float = _param(None, _WEIGHT, "weight of the cross-entropy term")
    kd_weight: float = _param(None, _WEIGHT, "weight of the distillation term")
    warmup_epochs: float = _param(None, _WEIGHT, "distillation weight ramps as min(epoch / warm-up, 1); 0: none")
    T: float = _param(None, _TEMPERATURE, "distillation temperature")
    alpha: float = _param(None, _WEIGHT, "DKD/RLD target-class weight; ABKD alpha")
    beta: float = _param(None, _WEIGHT, "DKD non-target weight; RLD below-target weight; ABKD beta")
    gamma: float = _param(None, _WEIGHT, "NKD non-target weight; TTM/WTTM teacher exponent")
    exclude_target: bool = _param(None, _optional(_flag), "NKD: drop the target from the non-target term")
    loss_params: dict = _param(None, _optional(_mapping), "hyper-parameters of a registered loss that are not "
                               "fields of their own, e.g. {'scale': 0.5}; None: the loss's defaults")
    logit_standardization: bool = _param(False, _flag, "z-score the teacher's and the student's logits per sample "
                                         "(per region for SD) before the temperature (Sun et al., CVPR 2024); "
                                         "loss defaults become their CIFAR-100 recipe; not the SDD paper's protocol")
    complementary_weight: float = _param(COMPLEMENTARY_WEIGHT, _float(low=0, what="a finite number >= 0"),
                                         "weight of complementary regions (consistent ones: 1)")
    clip_grad_norm: float = _param(40.0, _optional(_float(low=0, what="a finite number >= 0 (0: off)")),
                                   "gradient-norm clipping")
    seed: int = _param(0, _int(low=0, high=2 ** 32, what="an integer in [0, 2**32)"), "random seed")
    data_dir: str = _param("data", _text, "where the dataset is (or is downloaded to)")
    output_dir: str = _param("outputs", _text, "runs go to <output_dir>/<dataset>/<run name>/")
    teacher_ckpt: str = _param("", _text, "a teacher checkpoint file ({'model': state_dict} or a state dict)")
    teacher_weights: str = _param("", _text, "torchvision weights name for an ImageNet teacher")
    teachers_dir: str = _param("", _text, "a folder of published teachers: <arch>_vanilla/<arch>_best.pth")
    teacher_epochs: int = _param(None, _optional(_POSITIVE_INT), "epochs of a teacher trained here "
                                 "(None: the dataset's)")
    teacher_lr: float = _param(None, _optional(_float(low=0, low_open=True, what="a finite number > 0")),
                               "LR of a teacher trained here (None: the dataset's)")
    teacher_lr_decay_stages: tuple = _param(None, _optional(_stages), "LR stages of a teacher trained here "
                                            "(None: the dataset's)")
    subset: int = _param(0, _int(low=0, what="0 (all data) or a positive integer"), "first n images only")
    device: str = _param("auto", _device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
    num_workers: int = _param(None, _optional(_int(low=0, what="None or an integer >= 0")), "loader processes")
    pipeline: str = _param("auto", _choice(("auto",) + PIPELINES),
                           "training data: 'device' keeps an in-memory set (CIFAR-100, digit mosaics) on the training "
                           "device and augments whole batches there, 'workers' transforms per image in DataLoader "
                           "workers (the reference's way), 'device_decode' decodes the JPEG files of ImageNet and "
                           "CUB-200 on the training device (nvJPEG on a GPU), 'auto' is 'device' for in-memory sets "
                           "and 'workers' for files")
    run_name: str = _param("", _run_name, "folder name of the run (empty: from the configuration)")
    figures: bool = _param(True, _flag, "write the region figures after training")
    feature_figures: bool = _param(True, _flag, "with the figures: the t-SNE of penultimate features and the "
                                   "teacher-student correlation difference (one more pass over the test set; "
                                   "false for sweeps that do not need them)")
    tracker: tuple = _param("none", _trackers, "'none', 'tensorboard', 'wandb' or a list of both: log every epoch "
                            "and the run's figures there (rank 0; pip install -e \".[tracking]\")")
    progress: bool = _param(True, _flag, "fastai's progress bar in JupyterLab; headless (papermill, scripts) and "
                            "with False, one plain line per epoch instead")
    channels_last: bool = _param(False, _flag, "NHWC memory layout of the models and batches (the same fp32 "
                                 "arithmetic, faster convolutions on GPUs and on x86 CPUs)")
    precision: str = _param("fp32", _choice(PRECISIONS), "'fp32', or 'bf16': the forward passes under bfloat16 "
                            "autocast (changes the numbers: a departure from the paper)")
    compile: str = _param("off", _choice(COMPILE_MODES), "torch.compile of the step's forward passes: 'off', "
                          "'default', 'reduce-overhead' (CUDA graphs) or 'max-autotune'")
    sync_bn: bool = _param(None, _optional(_flag), "runs on several processes (torchrun): BatchNorm statistics over "
                           "the global batch (SyncBatchNorm, GPUs only); None: on for ImageNet, as the authors ran it")
    optimizer: str = _param("sgd", _choice(OPTIMIZERS),
                            "'sgd': the paper's SGD (momentum, L2 on every parameter); 'adamw': AdamW with "
                            "decoupled weight decay, none on norms, biases, position embeddings and class tokens "
                            "(timm's convention for transformers trained from scratch; not the paper's protocol)")
    lr_warmup_epochs: float = _param(0.0, _float(low=0, what="a finite number >= 0"),
                                     "the LR rises linearly from 0 over this many epochs, step by step (0: none, "
                                     "as published)")
    image_size: int = _param(None, _optional(_int(low=8, what="an integer >= 8")),
                             "dataset 'folder': side of the square images the models see (None: 224)")
    augment: str = _param("auto", _choice(AUGMENTS), "dataset 'folder': train augmentation, 'imagenet' (random "
                          "resized crop + flip), 'cifar' (pad 1/8, crop, flip), 'crop' (pad 1/16, crop, no flip: "
                          "digits, text) or 'auto' (cifar up to 64 px, imagenet above)")
    normalize: str = _param("imagenet", _choice(NORMALIZE), "dataset 'folder': ImageNet mean/std, or 'auto': "
                            "computed on a fixed sample of the training images (recorded in metrics)")
    val_fraction: float = _param(0.2, _float(low=0, high=1, low_open=True, high_open=True,
                                             what="a number in (0, 1)"),
                                 "dataset 'folder' without train/ and val/: the share of each class held out")
    skip_bad_images: bool = _param(False, _flag, "dataset 'folder': skip unreadable image files (counted in "
                                   "metrics) instead of stopping at the first")
    in_memory: object = _param("auto", _in_memory,
                               "dataset 'folder': keep the decoded images in memory and train through the device "
                               "pipeline; 'auto' when they fit memory_budget, True always (refused when over it), "
                               "False never (every epoch decodes the files)")
    memory_budget: float = _param(DEFAULT_MEMORY_BUDGET, _float(low=0, high=1, low_open=True,
                                                                 what="a number in (0, 1]"),
                                  "dataset 'folder': the share of the memory available when the data is loaded "
                                  "(host; on a GPU its free memory too) that the decoded images may take")
    teacher_pretrained: bool = _param(False, _flag, "build a timm:/torchvision: teacher from its ImageNet weights "
                                      "and fine-tune it on the data")
    teacher_weights_file: str = _param("", _text, "the teacher's ImageNet weights as a local .safetensors/.pth "
                                       "file (no network access)")
    student_pretrained: bool = _param(False, _flag, "start a timm:/torchvision: student from its ImageNet weights")
    student_weights_file: str = _param("", _text, "the student's ImageNet weights as a local file")
    imports: tuple = _param((), _imports, "modules to import before the parameters are checked, in every process "
                            "of the run (your own losses or models, registered when imported), e.g. ['my_losses']; "
                            "found from the folder a command starts in, PYTHONPATH or installed packages")
    # Not a parameter: the processes that train the run together (torchrun's world size; `on_processes`). With
    # BatchNorm per process it decides what the statistics are taken over, so it enters `bn_batch`.
    processes: int = field(default=1, metadata={"check": _POSITIVE_INT, "doc": "processes training the run",
                                                "parameter": False})

    # --- building ---------------------------------------------------------------------------------
    @classmethod
    def from_params(cls, params: Mapping) -> RunConfig:
        """Check and resolve a flat parameter mapping (notebook globals, params file): one sentence per problem."""
        if isinstance(params, RunConfig):
            return params
        params = dict(params)
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, PARAMETERS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"parameter {key!r} is unknown; {hint}the accepted ones are {', '.join(PARAMETERS)}.")
        _imports("imports", params.get("imports", ()))  # first: the losses and models they register are checked below
        if "M" in params:
            params["scales"] = params.pop("M")
        given_loss_values = {k: params[k] for k in LOSS_FIELDS if params.get(k) is not None}
        values = {}
        for f in _parameter_fields():
            value = params.get(f.name, f.default)
            check = f.metadata["check"]
            values[f.name] = check(f.name if f.name != "scales" else "M", value) if check else value
        try:
            values["scales"] = parse_scales(values["scales"])
        except ValueError as err:
            raise ConfigError(str(err)) from None
        spec = DATASETS[values["dataset"]]
        protocol = spec.protocol
        for key, value in protocol.items():
            if values[key] is None:
                values[key] = value
        method = METHODS[values["method"]]
        recipe = method.recipe(values["logit_standardization"])
        for key in ("ce_weight", "kd_weight", "warmup_epochs"):
            if values[key] is None:
                values[key] = recipe[key]
        for key in LOSS_FIELDS:
            values[key] = (recipe[key] if values[key] is None else _loss_value(method, key, values[key])) \
                if key in method.hyper else None
        values["loss_params"] = _loss_params(method, values["loss_params"] or {}, recipe)
        if values["sync_bn"] is None:
            values["sync_bn"] = spec.sync_bn
        _resolve_options(values, spec)
        stem = spec.stem_for(values["image_size"])
        for role, default in zip(("teacher", "student"), spec.pair_for(values["image_size"])):
            values[role] = default if values[role] is None else values[role]
            _check_model(role, values[role], stem)
            _check_pretrained(role, values[role], values[f"{role}_pretrained"], values[f"{role}_weights_file"])
        _check_pipeline(values["pipeline"], spec)
        longest = max(values["epochs"], protocol["epochs"])
        for key in ("lr_decay_stages", "teacher_lr_decay_stages"):
            if values[key] and values[key][-1] > longest:
                raise ConfigError(f"{key}={list(values[key])!r} goes beyond the schedule; each stage must be an "
                                  f"epoch from 1 to {longest} (the longer of epochs={values['epochs']} and the "
                                  f"{values['dataset']} protocol's {protocol['epochs']}).")
        cfg = cls(**values)
        # given values the method does not read: kept (the notebooks pass every key), said once when the run starts
        object.__setattr__(cfg, "_ignored", {k: v for k, v in given_loss_values.items() if values[k] is None})
        return cfg

    def replace(self, **changes) -> RunConfig:
        """A checked copy with some parameters changed (parameter names, e.g. M="[1]"), on the same processes; a
        value this method ignored is given again (another method may read it)."""
        return RunConfig.from_params({**self.to_params(), **self.ignored, **changes}).on_processes(self.processes)

    def on_processes(self, processes: int) -> RunConfig:
        """This configuration trained by `processes` processes together (torchrun's world size)."""
        if processes == self.processes:
            return self
        cfg = dataclasses.replace(self, processes=_POSITIVE_INT("processes", processes))
        object.__setattr__(cfg, "_ignored", self.ignored)
        return cfg

    # --- the flat view (notebooks, params files, metrics.json) -------------------------------------
    def to_params(self) -> dict:
        """The parameters as a params file writes them (M as text, lists as lists)."""
        out = {}
        for name in PARAMETERS:
            value = self[name]
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def __getitem__(self, key):
        if key == "M":
            return "[" + ",".join(str(s) for s in self.scales) + "]"
        if key not in PARAMETERS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(PARAMETERS)

    def __len__(self):
        return len(PARAMETERS)

    # --- what the run is --------------------------------------------------------------------------
    @property
    def method_spec(self) -> LogitLoss:
        """The registered loss of `method`."""
        return METHODS[self.method]

    @property
    def decoupled(self) -> bool:
        """False for M=[1], the plain method."""
        return self.scales != (1,)

    @property
    def variant(self) -> str:
        """`kd`, `dkd`, `nkd` (M=[1]) or `sd_kd`, `sd_dkd`, `sd_nkd`; `+ls` under logit standardization."""
        return f"{'sd_' if self.decoupled else ''}{self.method}{'+ls' if self.logit_standardization else ''}"

    @property
    def loss_kwargs(self) -> dict:
        """The base loss's hyper-parameters (only those the method accepts)."""
        return {k: getattr(self, k) if k in LOSS_FIELDS else self.loss_params[k] for k in self.method_spec.loss_keys}

    @property
    def name(self) -> str:
        """e.g. `resnet32x4-ShuffleV1-sd_dkd-M124-seed0`; M=[1] runs are the plain baselines (`dkd`)."""
        if self.run_name:
            return self.run_name
        return (f"{file_name(self.teacher)}-{file_name(self.student)}-{self.variant}-M{''.join(map(str, self.scales))}"
                f"-seed{self.seed}")

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) / self.data_name / self.name

    @property
    def data_pipeline(self) -> str:
        """The pipeline the run uses ('auto' resolved)."""
        if self.pipeline != "auto":
            return self.pipeline
        return self.data_spec.pipelines[0]

    @property
    def data_spec(self) -> DatasetSpec:
        """Everything sddlib knows about the run's dataset (`sddlib.data.spec`)."""
        return DATASETS[self.dataset]

    @property
    def stem(self) -> str:
        return self.data_spec.stem_for(self.image_size)

    @property
    def data_name(self) -> str:
        """The name runs are filed under: the dataset, or for dataset 'folder' the folder's own name."""
        return Path(self.data_dir).expanduser().resolve().name if self.data_spec.named_by_folder else self.dataset

    @property
    def data_options(self) -> dict:
        """The keywords of the dataset's loader beyond the common ones (the parameters only it takes)."""
        return {k: self[k] for k in self.data_spec.options}

    @property
    def num_classes(self) -> int | None:
        """The class count the models predict, known before the data is loaded (None: not known yet)."""
        return self.data_spec.num_classes(self.data_dir, self.val_fraction)

    @property
    def memory_options(self) -> dict:
        """Whether the folder loader may keep the images in memory, and its budget (dataset 'folder' only)."""
        return {k: self[k] for k in MEMORY_OPTIONS} if self.dataset == "folder" else {}

    @property
    def bn_batch(self) -> int:
        """How many images each BatchNorm layer normalises over: the global batch on one process or with
        SyncBatchNorm, each process's share otherwise. Every published experiment normalised over its whole
        batch (CIFAR-100 and CUB-200: one process, 64; ImageNet: 2 x 256 with SyncBatchNorm, 512)."""
        return self._bn_batch(self.batch_size)

    def _bn_batch(self, batch_size: int) -> int:
        return batch_size if self.sync_bn or self.processes == 1 else batch_size // self.processes

    def _bn(self, batch_size: int) -> dict:
        # named only when BatchNorm sees less than the global batch: earlier single-process runs keep their records
        bn = self._bn_batch(batch_size)
        return {} if bn == batch_size else {"bn_batch": bn}

    @property
    def ignored(self) -> dict:
        """Loss hyper-parameters given a value that the method does not read ({} when none)."""
        return getattr(self, "_ignored", {})

    @property
    def warnings(self) -> list[str]:
        """What the run accepts but the user may not expect, one sentence each (printed as the run starts and
        recorded in metrics.json)."""
        out = []
        if self.ignored:
            given = ", ".join(f"{k}={v!r}" for k, v in self.ignored.items())
            out.append(f"method {self.method} does not read {given}; "
                       f"its loss takes {', '.join(self.method_spec.loss_keys)}.")
        late = [s for s in self.lr_decay_stages if s >= self.epochs]
        stages = list(self.lr_decay_stages)
        if stages and late == stages:
            out.append(f"lr_decay_stages {stages} lie at or beyond epochs={self.epochs}: the LR never decays "
                       "in this run.")
        elif late:
            out.append(f"lr_decay_stages {late} of {stages} lie at or beyond epochs={self.epochs}: those decays "
                       "never happen in this run.")
        return out

    @property
    def solver(self) -> dict:
        """What decides the numbers of a training run (compared before a checkpoint is resumed)."""
        keys = ("epochs", "batch_size", "lr", "lr_decay_stages", "lr_decay_rate", "weight_decay", "momentum",
                "clip_grad_norm", "subset", "seed", "optimizer", "lr_warmup_epochs")
        return {**_without_unchanged_additions({k: self.to_params()[k] for k in keys}), **self._bn(self.batch_size)}

    @property
    def teacher_protocol(self) -> dict:
        """How a teacher is trained here: the dataset's solver and epochs (one protocol per dataset, whatever the
        student), with `teacher_epochs`, `teacher_lr` and `teacher_lr_decay_stages` where the user set them."""
        protocol = dict(self.data_spec.protocol)
        for key in ("epochs", "lr", "lr_decay_stages"):
            if getattr(self, f"teacher_{key}") is not None:
                protocol[key] = getattr(self, f"teacher_{key}")
        # a folder's teacher also depends on how its images are read and whether it started from ImageNet weights
        data = {**self.data_options, "pretrained": self.teacher_pretrained} if self.data_spec.options else {}
        return {**protocol, "lr_decay_stages": list(protocol["lr_decay_stages"]),
                "clip_grad_norm": self.clip_grad_norm, "subset": self.subset, "seed": TEACHER_SEED, **data,
                **self._bn(protocol["batch_size"])}

    def teacher_training_config(self) -> RunConfig:
        """The configuration under which the teacher is trained alone (from its ImageNet weights when asked)."""
        # bn_batch follows from the processes; pretrained is the student's (the teacher's) pretrained flag here
        protocol = {k: v for k, v in self.teacher_protocol.items() if k not in ("bn_batch", "pretrained")}
        student_only = {k: DEFAULTS[k] for k in ("optimizer", "lr_warmup_epochs")}  # the teacher's solver is SGD
        return self.replace(**protocol, **student_only, student=self.teacher, run_name="",
                            student_pretrained=self.teacher_pretrained, student_weights_file=self.teacher_weights_file)

    @property
    def fingerprint(self) -> dict:
        """Everything that decides the trained weights: equal fingerprints may continue each other's checkpoints.
        (Paths, device, loader processes, memory budget, figures, progress bars, memory layout, compilation and the
        modules imported do not change them beyond fp32 rounding; precision does; the method a module registers does.)"""
        skip = {"data_dir", "output_dir", "device", "num_workers", "figures", "feature_figures", "tracker",
                "progress", "run_name", "channels_last", "compile", "imports", "memory_budget"}
        return {**_without_unchanged_additions({k: v for k, v in self.to_params().items() if k not in skip}),
                **self._bn(self.batch_size)}

    # --- what lives outside the process -------------------------------------------------------------
    def check_environment(self, teacher_needed: bool = True) -> None:
        """Dataset layout, writable output folder, device, teacher checkpoint: before any work."""
        _check_device(self.device)
        try:
            present = self.data_spec.check_layout(self.data_dir)
        except DatasetLayoutError as err:
            raise ConfigError(str(err)) from None
        if not present:  # downloaded into it
            _check_writable("data_dir", self.data_dir)
        if self.data_spec.named_by_folder:
            check_folder(self)
        _check_writable("output_dir", self.output_dir)
        if not teacher_needed:
            return
        from .checkpoints import check_checkpoint
        from .models import create_model
        for source, path in (("teacher_ckpt", self.teacher_ckpt), ("teachers_dir", self.teachers_dir)):
            if not path or self.teacher_weights:
                continue
            if source == "teachers_dir":
                if not Path(path).is_dir():
                    raise ConfigError(f"teachers_dir={path!r} is not a folder; give the folder that holds "
                                      "<arch>_vanilla/<arch>_best.pth files (the authors' teachers), "
                                      "or leave it empty.")
                path = teacher_file_in(path, self.teacher)
            num_classes = self.num_classes
            model = create_model(self.teacher, num_classes=num_classes or 1000, stem=self.stem)
            check_checkpoint(model, path, arch=self.teacher, role="teacher", shapes=num_classes is not None)
            break


# Parameters added after runs were first recorded, with the value every earlier run had: a fingerprint names
# them only when they differ from it, so the runs and checkpoints recorded before they existed stay valid.
_ADDED_LATER = {"precision": "fp32", "sync_bn": False, "optimizer": "sgd", "lr_warmup_epochs": 0.0,
                "image_size": None, "augment": "auto", "normalize": "imagenet", "val_fraction": 0.2,
                "skip_bad_images": False, "in_memory": "auto",
                "teacher_pretrained": False, "teacher_weights_file": "", "student_pretrained": False,
                "student_weights_file": "", "loss_params": {}, "logit_standardization": False}


def _without_unchanged_additions(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in _ADDED_LATER or v != _ADDED_LATER[k]}


def _parameter_fields():
    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("parameter", True)]


PARAMETERS = tuple("M" if f.name == "scales" else f.name for f in _parameter_fields())

# Every parameter's input default, as a params file would write it (None: the dataset's or method's value).
DEFAULTS = {name: ("[1,2,4]" if name == "M" else
                   RunConfig.__dataclass_fields__[name].default) for name in PARAMETERS}


def parameter_table() -> list[dict]:
    """Every parameter with its type, what it accepts, its input default and its meaning (`python -m sddlib
    --params`, the notebooks' parameters documentation)."""
    rows = []
    for f in _parameter_fields():
        check = f.metadata["check"]
        accepted = ("one of " + ", ".join(map(repr, check.options)) if hasattr(check, "options") else
                    getattr(check, "accepted", "[1], [1,2] or [1,2,4]"))
        if hasattr(check, "options") and f.default is None:
            accepted = "None or " + accepted
        name = "M" if f.name == "scales" else f.name
        rows.append({"name": name, "type": f.type, "accepted": accepted, "default": DEFAULTS[name],
                     "doc": f.metadata["doc"]})
    return rows


def teacher_file_in(teachers_dir, arch: str) -> Path:
    """The authors' layout of published teachers: `<dir>/<arch>_vanilla/<arch>_best.pth` (CUB-200), or the
    CIFAR-100 release's `<dir>/<arch>_vanilla/ckpt_epoch_240.pth`."""
    folder = Path(teachers_dir) / f"{arch}_vanilla"
    for name in (f"{arch}_best.pth", "ckpt_epoch_240.pth"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"teachers_dir={str(teachers_dir)!r} has no teacher {arch} (expected {folder}/{arch}_best.pth); "
                      "point teachers_dir at the authors' teacher folder, or leave it empty to train one here.")


def file_name(arch: str) -> str:
    """A model name as part of a file or folder name ("timm:resnet18" -> "timm_resnet18")."""
    return arch.replace(":", "_")


def _resolve_options(values: dict, spec: DatasetSpec) -> None:
    """The parameters only some datasets take: refused for the others (unless at their default); a dataset that
    takes `image_size` sees 224-pixel images unless told otherwise."""
    for other in DATASETS.values():
        changed = [k for k, default in other.options.items() if k not in spec.options and values[k] != default]
        if changed:
            raise ConfigError(f"{changed[0]}={values[changed[0]]!r} applies to dataset {other.name!r} only, not "
                              f"{spec.name}; remove it or set dataset={other.name!r}.")
    changed = [k for k, default in MEMORY_OPTIONS.items() if spec.name != "folder" and values[k] != default]
    if changed:
        raise ConfigError(f"{changed[0]}={values[changed[0]]!r} applies to dataset 'folder' only (your own images), "
                          f"not {spec.name}; remove it or set dataset='folder'.")
    if "image_size" in spec.options and values["image_size"] is None:
        values["image_size"] = 224


def _check_pipeline(pipeline: str, spec: DatasetSpec) -> None:
    if pipeline == "auto" or pipeline in spec.pipelines:
        return
    why = ("its images are in memory, not JPEG files" if spec.in_memory else
           "its images are files, decoded per image" + ("" if "device_decode" in spec.pipelines else " in workers"))
    raise ConfigError(f"pipeline={pipeline!r} is not available for {spec.name} ({why}); use "
                      f"{', '.join(map(repr, spec.pipelines))} or 'auto'.")


def _check_pretrained(role, name, pretrained, weights_file):
    from .models import is_external
    if pretrained and not is_external(name):
        raise ConfigError(f"{role}_pretrained=True needs a timm or torchvision model with ImageNet weights, not "
                          f"{role}={name!r}; use e.g. {role}='timm:resnet18' or 'torchvision:resnet18'.")
    if weights_file and not pretrained:
        raise ConfigError(f"{role}_weights_file={weights_file!r} is given but {role}_pretrained is False; set "
                          f"{role}_pretrained=True to start from it, or leave {role}_weights_file empty.")


def _check_model(role, name, stem):
    from .models import external_exists, is_external, list_models
    if is_external(name):
        if not external_exists(name):
            library, model = name.split(":", 1)
            raise ConfigError(f"{role}={name!r}: {library} has no model {model!r}; see "
                              f"{'timm.list_models()' if library == 'timm' else 'torchvision.models.list_models()'}.")
        return
    names = list_models(stem)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"{role}={name!r} is not a model for this dataset{hint}; use one of {', '.join(names)}, "
                          "or any timm or torchvision classifier as 'timm:<name>' or 'torchvision:<name>'.")


def _check_device(device):
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} is not available on this machine (no CUDA GPU); "
                              "use 'auto' or 'cpu'.")
        index = int(device[5:] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r} does not exist; this machine has {torch.cuda.device_count()} "
                              "GPU(s), use 'cuda:0' or 'auto'.")


def _check_writable(name, folder):
    """A file is created and removed in the folder (or its nearest existing parent): permission bits alone pass
    folders no one can write to, such as /proc for root."""
    path = Path(folder).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise OSError
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".sddlib-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError:
        raise ConfigError(f"{name}={folder!r} cannot be written ({existing} is not a writable folder); "
                          "choose a folder you can write to.") from None


def check_folder(cfg: RunConfig) -> None:
    """A folder of your own images, before any work: its layout (`sddlib.data.scan_folder`, one sentence per
    problem), the weights files, and an image size the models' strides leave a feature map for the regions."""
    import torch

    from .data.folder import ImageFolderError, scan_folder
    from .models import create_model
    from .regions import _model_parts
    try:
        classes = len(scan_folder(cfg.data_dir, cfg.val_fraction).classes)
    except ImageFolderError as err:
        raise ConfigError(str(err)) from None
    for role in ("teacher", "student"):
        path = cfg[f"{role}_weights_file"]
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"{role}_weights_file={path!r} is not a file; give the path of the {cfg[role]} "
                              "ImageNet weights (.safetensors or .pth).")
    need = 4 if cfg.decoupled else 1  # SD pools a 4x4 grid from the map whatever M is (the authors' rule)
    for role in ("teacher", "student"):
        model = create_model(cfg[role], num_classes=classes, stem=cfg.stem).eval()
        try:
            features, _ = _model_parts(model)
        except TypeError as err:
            raise ConfigError(f"{role}={cfg[role]!r} cannot be scale-decoupled: {err}") from None
        try:
            with torch.no_grad():
                fmap = features(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
            side = min(fmap.shape[-2:]) if fmap.ndim == 4 else need  # token maps: the patch grid is checked by SD
        except RuntimeError:
            side = 0
        if side < need:
            raise ConfigError(f"image_size={cfg.image_size} is too small for {role} {cfg[role]}: its feature map "
                              f"would be {side}x{side}, and M={cfg['M']} needs at least {need}x{need}; raise "
                              "image_size or choose a model with a smaller stride.")
