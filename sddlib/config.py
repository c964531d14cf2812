"""The typed run configuration: every parameter of a run with its type, range and meaning, checked
once, before any data is loaded or a teacher trained.

`RunConfig.from_params(dict)` turns a notebook's parameters cell or a params/ file into a frozen
`RunConfig`: unknown keys get "did you mean", every value is checked against its range, `None`
values become the dataset's protocol or the method's defaults (the authors' values), and M is
parsed once into `scales`. Every problem is one sentence (`ConfigError`) naming the parameter, its value
and what is accepted (the checks of one value: `sddlib.validators`). What lives outside the process (the
dataset folder, the output folder, the teacher checkpoint) is checked by `sddlib.preflight`.

A `RunConfig` also reads like the flat dict it replaces (`cfg["lr"]`, `{**cfg, "seed": 1}`), so
notebooks and params files keep working unchanged.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .data.build import PIPELINES
from .data.folder import AUGMENTS, NORMALIZE
from .data.memory import DEFAULT_MEMORY_BUDGET
from .data.spec import DATASETS, DatasetSpec
from .losses import LOSS_FIELDS, LOSSES, LogitLoss
from .regions import COMPLEMENTARY_WEIGHT, parse_scales, scales_tag
from .custom_imports import imports_parameter
from .validators import (ConfigError, auto_or_flag, choice, device_name, flag, folder_name, integer, keywords,
                         mapping, names_or_none, optional, parse_list, real, stages, text)

__all__ = ["ConfigError", "parse_list", "METHODS", "OPTIMIZERS", "RunConfig",
           "PARAMETERS", "DEFAULTS"]


# The distillation methods: every registered logit loss (sddlib.losses.register_loss), with its authors' defaults.
METHODS = LOSSES

# How a folder's images are held (memory or files, `sddlib.data.memory`): folder-only, and outside the teacher
# protocol and the data options a run's records compare (where the images are held does not change the recipe).
MEMORY_OPTIONS = {"in_memory": "auto", "memory_budget": DEFAULT_MEMORY_BUDGET}


# Speed switches (sddlib.acceleration): autocast precisions and torch.compile modes.
PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# "sgd" is the paper's solver; "adamw" is for students that SGD does not train from scratch in a short schedule.
OPTIMIZERS = ("sgd", "adamw")
# "step" is the paper's LR schedule; "cosine" (half a cosine to 0, step by step) is for fine-tuning pretrained models.
LR_SCHEDULES = ("step", "cosine")
# Run trackers (sddlib.tracking), opt-in.
TRACKERS = ("tensorboard", "wandb")
# A teacher trained here always uses this seed: the cached teacher must not depend on which run came first.
TEACHER_SEED = 0


def _param(default, check, doc):
    return field(default=default, metadata={"check": check, "doc": doc})


_POSITIVE_INT = integer(low=1, what="a positive integer")
_NON_NEGATIVE = real(low=0, what="a finite number >= 0")
_WEIGHT = optional(_NON_NEGATIVE)
_POSITIVE = optional(real(low=0, low_open=True, what="a finite number > 0"))
_SHARE = real(low=0, high=1, low_open=True, what="a number in (0, 1]")


@dataclass(frozen=True)
class RunConfig(Mapping):
    """One run, resolved. `None` in a field below means "the dataset's protocol / the method's default"
    only on input; after `from_params` every training value is concrete. Loss hyper-parameters the
    method does not use are None."""
    dataset: str = _param("cifar100", choice(DATASETS), "cifar100, cub200, imagenet, digit_mosaic (demo), folder "
                          "(your own images) or a registered one (sddlib.data.spec)")
    teacher: str = _param(None, optional(text), "teacher architecture (sddlib.models.list_models)")
    student: str = _param(None, optional(text), "student architecture (sddlib.models.list_models)")
    method: str = _param("dkd", choice(METHODS), "base distillation loss: kd, dkd, nkd or a registered one "
                         "(sddlib.losses.register_loss)")
    scales: tuple = _param((1, 2, 4), None, "M: region scales, [1] (plain method), [1,2] or [1,2,4] (the paper's), "
                           "or any other increasing list from 1, e.g. [1,2,4,7] (each scale pooled from the feature "
                           "map, none larger than it; a departure); docs/choosing-m.md")
    epochs: int = _param(None, optional(_POSITIVE_INT), "training epochs")
    batch_size: int = _param(None, optional(_POSITIVE_INT), "images per step")
    lr: float = _param(None, _POSITIVE, "initial LR (None: the dataset's; on CIFAR-100 and CUB-200 0.01 for "
                       "ShuffleV1, ShuffleV2 and MobileNetV2 students, 0.05 for the others, as the authors' configs)")
    lr_decay_stages: tuple = _param(None, optional(stages), "epochs after which the LR is multiplied by the rate")
    lr_decay_rate: float = _param(None, optional(_SHARE), "LR multiplier at each stage")
    weight_decay: float = _param(None, _WEIGHT, "L2 weight decay on every parameter")
    momentum: float = _param(None, optional(real(low=0, high=1, high_open=True, what="a number in [0, 1)")),
                             "SGD momentum")
    ce_weight: float = _param(None, _WEIGHT, "weight of the cross-entropy term")
    kd_weight: float = _param(None, _WEIGHT, "weight of the distillation term")
    warmup_epochs: float = _param(None, _WEIGHT, "distillation weight ramps as min(epoch / warm-up, 1); 0: none")
    T: float = _param(None, _POSITIVE, "distillation temperature")
    alpha: float = _param(None, _WEIGHT, "DKD/RLD target-class weight; ABKD alpha")
    beta: float = _param(None, _WEIGHT, "DKD non-target weight; RLD below-target weight; ABKD beta")
    gamma: float = _param(None, _WEIGHT, "NKD non-target weight; TTM/WTTM teacher exponent")
    exclude_target: bool = _param(None, optional(flag), "NKD: drop the target from the non-target term")
    loss_params: dict = _param(None, optional(mapping), "hyper-parameters of a registered loss that are not "
                               "fields of their own, e.g. {'scale': 0.5}; None: the loss's defaults")
    recipe: str = _param(None, optional(choice(METHODS)), "the method the loss values (ce_weight, kd_weight, "
                         "warmup_epochs, T, alpha, beta, gamma, exclude_target, loss_params) were written for: when "
                         "`method` names another, each value equal to that method's registered recipe takes "
                         "`method`'s own instead, and the run's first lines say which (every params file of sddlib "
                         "names its own, so -p method X runs X's recipe; docs/losses.md); None: every value as given")
    logit_standardization: bool = _param(False, flag, "z-score the teacher's and the student's logits per sample "
                                         "(per region for SD) before the temperature (Sun et al., CVPR 2024); "
                                         "loss defaults become their CIFAR-100 recipe; not the SDD paper's protocol")
    complementary_weight: float = _param(COMPLEMENTARY_WEIGHT, _NON_NEGATIVE, "weight of complementary regions "
                                         "(consistent ones: 1)")
    clip_grad_norm: float = _param(40.0, optional(real(low=0, what="a finite number >= 0 (0: off)")),
                                   "gradient-norm clipping")
    seed: int = _param(0, integer(low=0, high=2 ** 32, high_open=True, what="an integer in [0, 2**32)"), "random seed")
    data_dir: str = _param("data", text, "where the dataset is (or is downloaded to)")
    output_dir: str = _param("outputs", text, "runs go to <output_dir>/<dataset>/<run name>/")
    teacher_ckpt: str = _param("", text, "a teacher checkpoint file ({'model': state_dict} or a state dict)")
    teacher_weights: str = _param("", text, "torchvision weights name for an ImageNet teacher")
    teachers_dir: str = _param("", text, "a folder of published teachers: <arch>_vanilla/<arch>_best.pth")
    teacher_epochs: int = _param(None, optional(_POSITIVE_INT), "epochs of a teacher trained here (None: the "
                                 "dataset's)")
    teacher_lr: float = _param(None, _POSITIVE, "LR of a teacher trained here (None: the dataset's)")
    teacher_lr_decay_stages: tuple = _param(None, optional(stages), "LR stages of a teacher trained here "
                                            "(None: the dataset's)")
    teacher_optimizer: str = _param("sgd", choice(OPTIMIZERS), "solver of a teacher trained or fine-tuned here: "
                                    "'sgd' (the dataset's protocol) or 'adamw' (as `optimizer`; for pretrained "
                                    "transformers)")
    teacher_lr_schedule: str = _param("step", choice(LR_SCHEDULES), "LR schedule of a teacher trained here "
                                      "(as `lr_schedule`)")
    teacher_lr_warmup_epochs: float = _param(0.0, _NON_NEGATIVE, "linear LR warm-up of a teacher trained here, in "
                                             "epochs (as `lr_warmup_epochs`; 0: none)")
    teacher_weight_decay: float = _param(None, _WEIGHT, "weight decay of a teacher trained here (None: the "
                                         "dataset's)")
    allow_teacher_training: bool = _param(False, flag, "CIFAR-100, CUB-200: when the published teacher is neither "
                                          "given, in teachers_dir, cached nor downloadable, train it here (once, "
                                          "before its students; the runs then depart from the paper's teacher) "
                                          "instead of stopping")
    subset: int = _param(0, integer(low=0, what="0 (all data) or a positive integer"), "first n images only")
    device: str = _param("auto", device_name, "'auto', 'cpu', 'cuda' or 'cuda:N'")
    num_workers: int = _param(None, optional(integer(low=0, what="None or an integer >= 0")), "loader processes")
    pipeline: str = _param("auto", choice(("auto",) + PIPELINES),
                           "training data: 'device' keeps an in-memory set (CIFAR-100, digit mosaics) on the training "
                           "device and augments whole batches there, 'workers' transforms per image in DataLoader "
                           "workers (the reference's way), 'device_decode' decodes the JPEG files of ImageNet and "
                           "CUB-200 on the training device (nvJPEG on a GPU), 'auto' is 'device' for in-memory sets "
                           "and 'workers' for files")
    run_name: str = _param("", folder_name, "folder name of the run (empty: from the configuration)")
    figures: bool = _param(True, flag, "write the region figures after training")
    feature_figures: bool = _param(True, flag, "with the figures: the t-SNE of penultimate features and the "
                                   "teacher-student correlation difference (one more pass over the test set; "
                                   "false for sweeps that do not need them)")
    tracker: tuple = _param("none", names_or_none(TRACKERS, "['tensorboard', 'wandb']"),
                            "'none', 'tensorboard', 'wandb' or a list of both: log every epoch "
                            "and the run's figures there (rank 0; pip install -e \".[tracking]\")")
    progress: bool = _param(True, flag, "fastai's progress bar in JupyterLab; headless (papermill, scripts) and "
                            "with False, one plain line per epoch instead")
    channels_last: bool = _param(False, flag, "NHWC memory layout of the models and batches (the same fp32 "
                                 "arithmetic, faster convolutions on GPUs and on x86 CPUs)")
    precision: str = _param("fp32", choice(PRECISIONS), "'fp32', or 'bf16': the forward passes under bfloat16 "
                            "autocast (changes the numbers: a departure from the paper)")
    compile: str = _param("off", choice(COMPILE_MODES), "torch.compile of the step's forward passes: 'off', "
                          "'default', 'reduce-overhead' (CUDA graphs) or 'max-autotune'")
    sync_bn: bool = _param(None, optional(flag), "runs on several processes (torchrun): BatchNorm statistics over "
                           "the global batch (SyncBatchNorm, GPUs only); None: on for ImageNet, as the authors ran it")
    optimizer: str = _param("sgd", choice(OPTIMIZERS),
                            "'sgd': the paper's SGD (momentum, L2 on every parameter); 'adamw': AdamW with "
                            "decoupled weight decay, none on norms, biases, position embeddings and class tokens "
                            "(timm's convention for transformers trained from scratch; not the paper's protocol)")
    lr_warmup_epochs: float = _param(0.0, _NON_NEGATIVE, "the LR rises linearly from 0 over this many epochs, step "
                                     "by step (0: none, as published)")
    lr_schedule: str = _param("step", choice(LR_SCHEDULES), "'step': the paper's (x lr_decay_rate after each of "
                              "lr_decay_stages); 'cosine': after the warm-up, half a cosine from lr to 0 over the "
                              "remaining epochs, step by step (lr_decay_stages unused; not the paper's protocol)")
    image_size: int = _param(None, optional(integer(low=8, what="an integer >= 8")),
                             "dataset 'folder': side of the square images the models see (None: 224)")
    augment: str = _param("auto", choice(AUGMENTS), "dataset 'folder': train augmentation, 'imagenet' (random "
                          "resized crop + flip), 'cifar' (pad 1/8, crop, flip), 'crop' (pad 1/16, crop, no flip: "
                          "digits, text) or 'auto' (cifar up to 64 px, imagenet above)")
    normalize: str = _param("imagenet", choice(NORMALIZE), "dataset 'folder': ImageNet mean/std, 'auto': "
                            "computed on a fixed sample of the training images (recorded in metrics), or 'model': "
                            "each model the mean/std its ImageNet weights were trained with (timm's pretrained_cfg, "
                            "torchvision's weights; ImageNet's for a model trained from scratch)")
    val_fraction: float = _param(0.2, real(low=0, high=1, low_open=True, high_open=True,
                                             what="a number in (0, 1)"),
                                 "dataset 'folder' without train/ and val/: the share of each class held out")
    skip_bad_images: bool = _param(False, flag, "dataset 'folder': skip unreadable image files (counted in "
                                   "metrics) instead of stopping at the first")
    in_memory: object = _param("auto", auto_or_flag,
                               "dataset 'folder': keep the decoded images in memory and train through the device "
                               "pipeline; 'auto' when they fit memory_budget, True always (refused when over it), "
                               "False never (every epoch decodes the files)")
    memory_budget: float = _param(DEFAULT_MEMORY_BUDGET, _SHARE,
                                  "dataset 'folder': the share of the memory available when the data is loaded "
                                  "(host; on a GPU its free memory too) that the decoded images may take")
    teacher_pretrained: bool = _param(False, flag, "build a timm:/torchvision: teacher from its ImageNet weights "
                                      "and fine-tune it on the data")
    teacher_weights_file: str = _param("", text, "the teacher's ImageNet weights as a local .safetensors/.pth "
                                       "file (no network access)")
    student_pretrained: bool = _param(False, flag, "start a timm:/torchvision: student from its ImageNet weights")
    student_weights_file: str = _param("", text, "the student's ImageNet weights as a local file")
    teacher_kwargs: dict = _param(None, keywords, "keyword arguments of a timm:/torchvision: teacher's "
                                  "constructor, e.g. {'img_size': 32, 'patch_size': 8}; checked before any work")
    student_kwargs: dict = _param(None, keywords, "keyword arguments of a timm:/torchvision: student's "
                                  "constructor, e.g. {'img_size': 32, 'drop_path_rate': 0.1}")
    imports: tuple = _param((), imports_parameter, "modules to import before the parameters are checked, in every "
                            "process of the run (your own losses or models, registered when imported), e.g. "
                            "['my_losses']; found from the folder a command starts in, PYTHONPATH or installed packages")
    tune_fraction: float = _param(0.0, real(low=0, high=1, high_open=True, what="a number in [0, 1)"),
                                  "tuning (python -m sddlib.tune): the share of each class of the training images held "
                                  "out to score the run on, the test split unread; 0: scored on the test split")
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
        imports_parameter("imports", params.get("imports", ()))  # first: what they register is checked below
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
        lr_of_student = values["lr"] is None   # the student's own LR, once the student is known (below)
        for key, value in protocol.items():
            if values[key] is None:
                values[key] = value
        recipe_change = METHODS[values["method"]].resolve(values, given_as=METHODS.get(values["recipe"]))
        values["recipe"] = values["method"]   # the values are now the method's recipe (and what was kept)
        if values["sync_bn"] is None:
            values["sync_bn"] = spec.sync_bn
        _resolve_options(values, spec)
        from .models import check_model_kwargs, check_model_name, check_pretrained
        stem = spec.stem_for(values["image_size"])
        for role, default in zip(("teacher", "student"), spec.pair_for(values["image_size"])):
            values[role] = default if values[role] is None else values[role]
            check_model_name(role, values[role], stem)
            check_pretrained(role, values[role], values[f"{role}_pretrained"], values[f"{role}_weights_file"])
            check_model_kwargs(role, values[role], values[f"{role}_kwargs"])
        if lr_of_student:
            values["lr"] = spec.lr_for(values["student"])
        spec.check_pipeline(values["pipeline"])
        if values["tune_fraction"] and not spec.holds_out:
            raise ConfigError(f"tune_fraction={values['tune_fraction']!r} needs a loader that holds out part of the "
                              f"training images, which dataset {spec.name!r}'s does not; set tune_fraction=0.")
        longest = max(values["epochs"], protocol["epochs"])
        for key in ("lr_decay_stages", "teacher_lr_decay_stages"):
            if values[key] and values[key][-1] > longest:
                raise ConfigError(f"{key}={list(values[key])!r} goes beyond the schedule; each stage must be an "
                                  f"epoch from 1 to {longest} (the longer of epochs={values['epochs']} and the "
                                  f"{values['dataset']} protocol's {protocol['epochs']}).")
        cfg = cls(**values)
        # given values the method does not read: kept (the notebooks pass every key), said once when the run starts
        object.__setattr__(cfg, "_ignored", {k: v for k, v in given_loss_values.items()
                                             if values[k] is None and k not in recipe_change.get("took", {})})
        object.__setattr__(cfg, "_recipe_change", recipe_change)
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
        object.__setattr__(cfg, "_recipe_change", self.recipe_change)
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
        from .models import file_name
        if self.run_name:
            return self.run_name
        return (f"{file_name(self.teacher)}-{file_name(self.student)}-{self.variant}-M{scales_tag(self.scales)}"
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
    def recipe_change(self) -> dict:
        """What the method took of its own recipe in place of the values written as another's (`recipe`):
        {"recipe": that method, "took": {name: [value now, value given]}, "kept": {name: value}}; {} when none."""
        return getattr(self, "_recipe_change", {})

    @property
    def solver(self) -> dict:
        """What decides the numbers of a training run (compared before a checkpoint is resumed)."""
        keys = ("epochs", "batch_size", "lr", "lr_decay_stages", "lr_decay_rate", "weight_decay", "momentum",
                "clip_grad_norm", "subset", "seed", "optimizer", "lr_warmup_epochs", "lr_schedule", "tune_fraction")
        return {**_without_unchanged_additions({k: self.to_params()[k] for k in keys}), **self._bn(self.batch_size)}

    @property
    def teacher_protocol(self) -> dict:
        """How a teacher is trained here: the dataset's solver and epochs (one protocol per dataset, whatever the
        student), with `teacher_epochs`, `teacher_lr`, `teacher_lr_decay_stages` and `teacher_weight_decay` where
        the user set them; its optimizer, LR schedule, warm-up and constructor keywords where they are not the
        paper's (SGD, step, none, none: a teacher cached before they existed keeps its protocol)."""
        protocol = dict(self.data_spec.protocol)
        for key in ("epochs", "lr", "lr_decay_stages", "weight_decay"):
            if getattr(self, f"teacher_{key}") is not None:
                protocol[key] = getattr(self, f"teacher_{key}")
        solver = _without_unchanged_additions({k: self[f"teacher_{k}"] for k in _TEACHER_SOLVER})
        model = {"model_kwargs": self.teacher_kwargs} if self.teacher_kwargs else {}
        # a folder's teacher also depends on how its images are read and whether it started from ImageNet weights
        data = {**self.data_options, "pretrained": self.teacher_pretrained} if self.data_spec.options else {}
        return {**protocol, "lr_decay_stages": list(protocol["lr_decay_stages"]), **solver, **model,
                "clip_grad_norm": self.clip_grad_norm, "subset": self.subset, "seed": TEACHER_SEED, **data,
                **({"tune_fraction": self.tune_fraction} if self.tune_fraction else {}),  # a tuner's: no test split
                **self._bn(protocol["batch_size"])}

    def teacher_training_config(self) -> RunConfig:
        """The configuration under which the teacher is trained alone (from its ImageNet weights when asked)."""
        # bn_batch follows from the processes; pretrained and the keywords are the student's (the teacher's) here
        protocol = {k: v for k, v in self.teacher_protocol.items()
                    if k not in ("bn_batch", "pretrained", "model_kwargs", *_TEACHER_SOLVER)}
        solver = {k: self[f"teacher_{k}"] for k in _TEACHER_SOLVER}   # never the student's
        return self.replace(**protocol, **solver, student=self.teacher, run_name="",
                            student_pretrained=self.teacher_pretrained, student_weights_file=self.teacher_weights_file,
                            student_kwargs=self.teacher_kwargs)

    @property
    def fingerprint(self) -> dict:
        """Everything that decides the trained weights: equal fingerprints may continue each other's checkpoints.
        (Paths, device, loader processes, memory budget, figures, progress bars, memory layout, compilation, the
        modules imported and whether a teacher may be trained here (its source is recorded apart) do not change them
        beyond fp32 rounding; precision does; the method a module registers does.)"""
        skip = {"data_dir", "output_dir", "device", "num_workers", "figures", "feature_figures", "tracker",
                "progress", "run_name", "channels_last", "compile", "imports", "memory_budget", "recipe",
                "allow_teacher_training"}
        return {**_without_unchanged_additions({k: v for k, v in self.to_params().items() if k not in skip}),
                **self._bn(self.batch_size)}


# Parameters added after runs were first recorded, with the value every earlier run had: a fingerprint names
# them only when they differ from it, so the runs and checkpoints recorded before they existed stay valid.
_ADDED_LATER = {"precision": "fp32", "sync_bn": False, "optimizer": "sgd", "lr_warmup_epochs": 0.0,
                "image_size": None, "augment": "auto", "normalize": "imagenet", "val_fraction": 0.2,
                "skip_bad_images": False, "in_memory": "auto",
                "teacher_pretrained": False, "teacher_weights_file": "", "student_pretrained": False,
                "student_weights_file": "", "loss_params": {}, "logit_standardization": False,
                "lr_schedule": "step", "teacher_optimizer": "sgd", "teacher_lr_schedule": "step",
                "teacher_lr_warmup_epochs": 0.0, "teacher_weight_decay": None, "teacher_kwargs": {},
                "student_kwargs": {}, "tune_fraction": 0.0}
# The solver keys a teacher trained here takes from its own `teacher_<key>` parameter, never from the student's.
_TEACHER_SOLVER = ("optimizer", "lr_schedule", "lr_warmup_epochs")


def _without_unchanged_additions(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in _ADDED_LATER or v != _ADDED_LATER[k]}


def _parameter_fields():
    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("parameter", True)]


PARAMETERS = tuple("M" if f.name == "scales" else f.name for f in _parameter_fields())

# Every parameter's input default, as a params file would write it (None: the dataset's or method's value).
DEFAULTS = {name: ("[1,2,4]" if name == "M" else
                   RunConfig.__dataclass_fields__[name].default) for name in PARAMETERS}


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
