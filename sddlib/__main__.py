"""One experiment from the command line, with papermill's parameter flags; the same command runs on one
process or, under torchrun, on many (`sddlib.distributed`).

    python -m sddlib -f params/imagenet/ResNet50-MobileNetV1-sd_dkd.yaml -p epochs 1 -p device cpu
    torchrun --nproc_per_node 8 -m sddlib -f params/imagenet/ResNet50-MobileNetV1-sd_dkd.yaml
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --rdzv_endpoint node0:29500 -m sddlib -f <file>

`-f` reads a params file, each `-p KEY VALUE` sets one parameter (VALUE parsed as YAML, text parameters
such as M stay text), later ones win. The run is `experiment.run` (a distillation), or with `--alone` the
student (or `--alone ARCH`) trained alone with cross-entropy (`experiment.run_vanilla`). A bad parameter,
dataset or checkpoint, or a published CIFAR-100/CUB-200 teacher nothing can give (`allow_teacher_training` trains
it here instead), ends with one sentence and exit status 2; a run that fails (non-finite loss, out of
memory) with exit status 1; Ctrl-C with one line naming the epoch whose checkpoint is kept (the same command
resumes from it) and exit status 130.
`python -m sddlib --params` lists every parameter: type, accepted values, default, meaning.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import yaml

from .startup import heavy_imports


def add_run_parameters(ap: argparse.ArgumentParser) -> None:
    """`-f` and `-p`: a run's parameters as papermill's flags give them (`load_params` merges them)."""
    ap.add_argument("-f", "--parameters-file", action="append", default=[], metavar="FILE",
                    help="a params/ file (flat YAML); several are merged in order")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="set a parameter, e.g. -p epochs 1 -p M \"[1]\"")


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sddlib", description=__doc__.split("\n\n")[0])
    add_run_parameters(ap)
    ap.add_argument("--alone", nargs="?", const="", metavar="ARCH",
                    help="train ARCH (default: the student) alone with cross-entropy instead of distilling")
    ap.add_argument("--force", action="store_true", help="run again even if metrics.json is complete")
    ap.add_argument("--params", action="store_true", help="list every parameter (type, accepted values, default, "
                    "meaning) and exit")
    return ap.parse_args(argv)


def load_params(files, pairs) -> dict:
    """The parameters of `-f` files and `-p` pairs, as papermill merges them."""
    from .sweep import parse_overrides
    params = {}
    for path in files:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            from .config import ConfigError
            raise ConfigError(f"{path} is not a params file; give a flat YAML mapping of parameters (key: value).")
        params.update(values)
    params.update(parse_overrides(pairs))
    return params


def parameter_table() -> list[dict]:
    """Every parameter with its type, what it accepts, its input default and its meaning (`sddlib.config.RunConfig`'s
    fields: their checks and docs)."""
    import dataclasses

    from .config import DEFAULTS, RunConfig
    rows = []
    for f in dataclasses.fields(RunConfig):
        if not f.metadata.get("parameter", True):
            continue
        check = f.metadata["check"]
        accepted = ("an increasing list of ints from 1, e.g. [1,2,4] or [1,2,4,7]" if check is None else  # M
                    "one of " + ", ".join(map(repr, check.options)) if hasattr(check, "options") else check.accepted)
        if hasattr(check, "options") and f.default is None:
            accepted = "None or " + accepted
        name = "M" if f.name == "scales" else f.name
        rows.append({"name": name, "type": f.type, "accepted": accepted, "default": DEFAULTS[name],
                     "doc": f.metadata["doc"]})
    return rows


def print_parameters() -> None:
    """Every run parameter, one paragraph each: `name (type, default D)`, its meaning, what it accepts."""
    for row in parameter_table():
        print(f"{row['name']} ({row['type']}, default {row['default']!r})\n    {row['doc']}\n"
              f"    accepts: {row['accepted']}")


def main(argv=None) -> int:
    args = parse(argv)
    if args.params:
        print_parameters()
        return 0
    with heavy_imports():   # collected at no point while they load, frozen afterwards (sddlib.startup)
        from . import distributed, experiment
        from .checkpoints import CheckpointError
        from .config import ConfigError, RunConfig
        from .data import DatasetNotFoundError
        from .locks import RunLockedError
        from .training import RunFailedError, RunInterrupted
    try:
        params = load_params(args.parameters_file, args.parameter)
        with distributed.process_group(RunConfig.from_params(params).device) as device:
            params["device"] = device
            # rank 0 prints the log; the others keep their errors (stderr) only
            quiet = open(os.devnull, "w") if not distributed.is_main() else None
            with quiet or contextlib.nullcontext(), contextlib.redirect_stdout(quiet or sys.stdout):
                if args.alone is None:
                    experiment.run(params, force=args.force)
                else:
                    experiment.run_vanilla(params, arch=args.alone or None, force=args.force)
    except (ConfigError, CheckpointError, DatasetNotFoundError, RunLockedError, FileNotFoundError,
            yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunFailedError as err:
        print(f"failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: one line (the epoch kept, if training), no traceback
        print(f"{err}." if isinstance(err, RunInterrupted) else
              "interrupted; the same command resumes the run from its last kept epoch (if it had one).",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
