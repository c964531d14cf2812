"""A table as a plan: params files x seeds -> every run the table needs, each once, before anything runs.

    plan = build_plan(["params/cifar100/resnet32x4-ShuffleV1-sd_kd.yaml"], seeds=[0, 1, 2])
    for run in plan.runs: print(run.line())          # what `python -m sddlib.sweep ... --dry-run` prints
    Plan.from_json(plan.to_json())                   # the same plan (`--plan-file`)

With `seeds`, each file's run at every seed brings the rest of its row: its plain baseline (the same file with
M=[1] on CIFAR-100 and CUB-200; the authors' own baseline file where the dataset has one, `DatasetSpec.plain_rows`)
and its student trained alone under the file's solver (the paper's "student" rows; once per student and seed,
however many rows share it). Without `seeds` the plan is the files' runs as they are. Either way, each teacher that
has to be trained here is a run of its own, before its students (`teacher_source.teacher_origin` judges where every
teacher comes from, from the disk alone; on CIFAR-100 and CUB-200 a teacher nothing can give stops the plan in one
sentence, unless `allow_teacher_training`). Runs are keyed by their run folder: a run that two rows need is planned
once.

Pure data (the shape of Hydra's expanded sweep and DVC's queue entries): a `Plan` is a tuple of frozen
`PlannedRun`s, with `asdict`/`from_dict`, whose `state` is read from the run folders (complete, to run, failed
before with that failure's sentence). Nothing here trains, loads a model or downloads; `sddlib.sweep` runs a plan.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import DEFAULTS, RunConfig
from .departures import PARAMS_DIR
from .experiment import RESUME_FILE, vanilla_dir
from .run_pipeline import alone_fingerprint
from .runs import load_metrics
from .shipped import checkout
from .teacher_source import TeacherMissingError, teacher_origin, teacher_run_dir

__all__ = ["KINDS", "STATES", "FAILURE_FILE", "PlannedRun", "Plan", "build_plan", "read_params", "run_state"]

# Run kinds in the order they run: teachers before their students.
KINDS = ("teacher", "alone", "baseline", "sd")
STATES = ("complete", "to run", "failed before")
# A sweep's sentence for a run that failed without saying so in its metrics.json (a notebook that raised).
FAILURE_FILE = "failure.txt"
# Relative paths in a params file mean "from where the plan is made".
PATH_KEYS = ("output_dir", "data_dir", "teacher_ckpt", "teachers_dir", "teacher_weights_file", "student_weights_file")
ROOT = checkout() or Path.cwd()


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan. `folder` is its key; `params` what it is given (absolute paths); `teacher_source` one of
    `teacher_source.ORIGINS` ("" for a model trained without a teacher); `after`: the run folders that must be
    complete before it starts (its teacher trained here); `estimate_s`, `peak_bytes`: its cost on this device,
    when estimated (`sddlib.run_cost`)."""
    run: str
    kind: str
    folder: str
    file: str
    params: dict = field(hash=False)
    teacher_source: str = ""
    state: str = "to run"
    reason: str = ""
    resumes: bool = False
    after: tuple = ()
    estimate_s: float | None = None
    peak_bytes: int | None = None

    def asdict(self) -> dict:
        return {**dataclasses.asdict(self), "after": list(self.after)}

    @classmethod
    def from_dict(cls, values: dict) -> PlannedRun:
        return cls(**{**values, "after": tuple(values.get("after", ()))})

    @property
    def arch(self) -> str:
        """The model it trains: the student, or the teacher of a teacher run."""
        cfg = RunConfig.from_params(self.params)
        return cfg.teacher if self.kind == "teacher" else cfg.student

    def line(self) -> str:
        """One line of a dry run: state, kind, run name, its teacher's source, where it comes from."""
        state = "to run (resumes)" if self.state == "to run" and self.resumes else self.state
        teacher = f"  teacher: {self.teacher_source}" if self.teacher_source else ""
        cost = "" if self.estimate_s is None else \
            f"  ~{self.estimate_s / 3600:.2f} device-h, peak {self.peak_bytes / 2**30:.1f} GiB"
        why = f": {self.reason}" if self.reason else ""
        return f"{state:<16} {self.kind:<8} {self.run}{teacher}{cost}  <- {self.file}{why}"


@dataclass(frozen=True)
class Plan:
    """Every run of a table, in the order they start (teachers first), and the files that could not be planned
    ((file, sentence) each: a failure of that file only)."""
    runs: tuple = ()
    problems: tuple = ()

    def counts(self) -> str:
        """e.g. "12 runs (2 teacher, 2 alone, 4 baseline, 4 sd): 3 complete, 9 to run, 0 failed before"."""
        kinds, states = Counter(r.kind for r in self.runs), Counter(r.state for r in self.runs)
        return (f"{len(self.runs)} runs ({', '.join(f'{kinds[k]} {k}' for k in KINDS)}): "
                + ", ".join(f"{states[s]} {s}" for s in STATES))

    def to_json(self) -> str:
        return json.dumps({"runs": [r.asdict() for r in self.runs], "problems": [list(p) for p in self.problems]},
                          indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        return cls(tuple(PlannedRun.from_dict(r) for r in data["runs"]), tuple(map(tuple, data["problems"])))

    def write(self, path) -> Path:
        """The plan as JSON at `path` (before anything runs: what was planned stays on disk)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    def with_estimates(self, costs: dict) -> Plan:
        """The plan with each run of `costs` ({run folder: (seconds, peak bytes)}) given its estimate."""
        runs = tuple(dataclasses.replace(r, estimate_s=costs[r.folder][0], peak_bytes=costs[r.folder][1])
                     if r.folder in costs else r for r in self.runs)
        return dataclasses.replace(self, runs=runs)

    def downloads(self) -> list[PlannedRun]:
        """Runs whose published teacher is still to be downloaded (the sweep fetches them before anything runs)."""
        return [r for r in self.runs if r.teacher_source == "published download"]


def read_params(path, overrides: dict) -> dict:
    """A params file's parameters with the overrides, relative paths made absolute, output_dir filled in (what the
    notebook would use)."""
    params = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path} is not a flat YAML mapping of parameters.")
    params.update(overrides)
    params.setdefault("output_dir", str(ROOT / DEFAULTS["output_dir"]))
    for key in PATH_KEYS:
        if params.get(key):
            params[key] = str(Path(params[key]).expanduser().absolute())
    return params


def run_state(folder) -> tuple[str, str, bool]:
    """(state, the failure's sentence, whether it resumes) of a run folder, read from the disk."""
    folder = Path(folder)
    if load_metrics(folder / "metrics.json") is not None:
        return "complete", "", False
    resumes = (folder / RESUME_FILE).is_file()
    try:
        recorded = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and recorded.get("status") == "failed":
        return "failed before", str(recorded.get("reason", "")), resumes
    if (folder / FAILURE_FILE).is_file():
        return "failed before", (folder / FAILURE_FILE).read_text().strip(), resumes
    return "to run", "", resumes


def build_plan(files, overrides: dict | None = None, seeds=None, unreachable: dict | None = None) -> Plan:
    """The plan of `files` (with `overrides`, at each of `seeds` when given: the whole table). `unreachable`:
    {data_dir: why} for published downloads that were tried and failed. A teacher nothing can give on CIFAR-100
    or CUB-200 (without `allow_teacher_training`) raises `TeacherMissingError` with its sentence: the plan stops."""
    overrides, unreachable = dict(overrides or {}), unreachable or {}
    rows, problems = {}, []
    for path in files:
        try:
            wanted = _file_runs(path, overrides, seeds, unreachable)
        except TeacherMissingError:
            raise
        except (OSError, ValueError, yaml.YAMLError) as err:  # ConfigError included: a failure of that file only
            problems.append((str(path), f"{type(err).__name__}: {err}"))
            continue
        for run, fingerprint in wanted:
            if run.folder not in rows:
                rows[run.folder] = (run, fingerprint)
            elif rows[run.folder][1] != fingerprint:
                problems.append((run.file, f"{run.run} needs run folder {run.folder} with other values than "
                                           f"{rows[run.folder][0].file} gives it; change its seed or run_name"))
    runs = sorted((run for run, _ in rows.values()), key=lambda r: KINDS.index(r.kind))
    return Plan(tuple(runs), tuple(problems))


def _file_runs(path, overrides: dict, seeds, unreachable: dict) -> list[tuple[PlannedRun, dict]]:
    """The runs one params file brings, each with the fingerprint that must agree with any other plan of its
    folder."""
    base = read_params(path, overrides)
    out = []
    for seed in (seeds if seeds is not None else [None]):
        params = base if seed is None else {**base, "seed": seed}
        cfg = RunConfig.from_params(params)
        rows = [(params, path)]
        if seeds is not None:
            rows.append(_baseline(cfg, params, path, overrides))
        for row_params, row_file in rows:
            if row_params is None:
                continue
            out += _distillation(row_params, row_file, unreachable)
        if seeds is not None:
            folder = vanilla_dir(cfg, cfg.student)
            out.append((_planned(folder.name, "alone", folder, path, params), alone_fingerprint(cfg, cfg.student)))
    return out


def _baseline(cfg: RunConfig, params: dict, path, overrides: dict) -> tuple:
    """(params, file) of the plain run a row is compared with: M=[1] of the same file, or the authors' own
    baseline file (ImageNet), looked for beside the file, then in params/."""
    if not cfg.decoupled:
        return None, path
    if cfg.data_spec.plain_rows is None:
        return {**params, "M": "[1]"}, path
    name = f"{cfg.teacher}-{cfg.student}-{cfg.method}.yaml"
    for folder in (Path(path).parent, PARAMS_DIR / cfg.dataset):
        if (folder / name).is_file():
            return {**read_params(folder / name, overrides), "seed": cfg.seed}, folder / name
    raise ValueError(f"{cfg.data_spec.title}'s plain rows are the authors' own configs, and {name} is neither beside "
                     f"{path} nor in {PARAMS_DIR / cfg.dataset}; add it there.")


def _distillation(params: dict, path, unreachable: dict) -> list[tuple[PlannedRun, dict]]:
    """A distillation run, after the run that trains its teacher when one has to be trained here."""
    cfg = RunConfig.from_params(params)
    origin = teacher_origin(cfg, unreachable.get(str(Path(cfg.data_dir))))
    kind = "sd" if cfg.decoupled else "baseline"
    out, after = [], ()
    if origin == "trained here":
        folder = teacher_run_dir(cfg)
        out.append((_planned(folder.name, "teacher", folder, path, params), cfg.teacher_protocol))
        after = (str(folder),)
    out.append((_planned(cfg.name, kind, cfg.directory, path, params, origin, after), cfg.fingerprint))
    return out


def _planned(run: str, kind: str, folder: Path, path, params: dict, origin: str = "", after: tuple = ()) -> PlannedRun:
    state, reason, resumes = run_state(folder)
    return PlannedRun(run, kind, str(folder), str(path), dict(params), origin, state, reason, resumes, after)
