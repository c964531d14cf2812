"""SD's gain on the digit mosaics, measured over several seeds: the quickstart's pair (resnet14 -> resnet8)
under the full digit_mosaic protocol, the student alone and KD, DKD and NKD, each plain (M=[1]) and scale
decoupled (M=[1,2,4]), for every seed; `--methods` picks the variants, logit standardization included
(`kd+ls`, `sd_kd+ls`: the switch `logit_standardization` with its defaults), and the other registered losses
of the family (TTM, WTTM, RLD, ABKD: sddlib/loss_family.py).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sd_gain.py --seeds 0 1 2 --jobs 2 --record
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sd_gain.py --methods kd,kd+ls,sd_kd,sd_kd+ls --record
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sd_gain.py --methods ttm,sd_ttm,wttm,sd_wttm,rld,sd_rld,abkd,sd_abkd
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sd_gain.py --methods kd,sd_kd --scales [1,2] [1,2,4] [1,2,4,8]

`--scales` runs every SD variant once per M (docs/choosing-m.md): the table has a row per M, and the gains are
paired by seed against the plain method (M=[1]), one row per M.

The settings are the quickstart notebook's defaults: the dataset's protocol (8 epochs, batch 64, SGD lr 0.05
x0.1 after epochs 5 and 7, weight decay 5e-4), the teacher trained here under that protocol (seed 0, one
teacher for every seed), each method's loss defaults, DKD/NKD/RLD warm-up 2 epochs (their authors: 20 of 240),
none for the others (none either in their authors' recipes). Two
settings that change only float rounding differ: the runs keep the reference NCHW layout (the quickstart
trains in channels_last) and `--threads` per run. The teacher it trains with one thread is the one
sddlib ships for the quickstart (`sddlib/teachers/digit_mosaic/resnet14.pth`), bit for bit.
Runs go to `--output-dir` (default outputs/sd_gain/); complete runs are skipped and interrupted ones resume,
so a rerun only trains what is missing. Runs go seed by seed (every variant of the first seed, then the next), so
a call stopped early leaves complete paired comparisons for the seeds it finished. The summary gives, per method, best and last top-1 as mean ± std (n)
(`sddlib.report.results_table`), and per base method the SD gain paired by seed, with the number of seeds
in which SD was ahead (`sddlib.report.sd_gains`); `--record` writes it to benchmarks/results.md, replacing
the section an earlier call wrote.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout: this sddlib, not another one on the path
from sddlib import experiment, report, teacher_source  # noqa: E402
from sddlib.checkpoints import shipped_teacher_path  # noqa: E402
from sddlib.regions import parse_scales  # noqa: E402

RESULTS = REPO / "benchmarks" / "results.md"
SECTION = "### sd_gain.py"
TEACHER, STUDENT, SD_SCALES = "resnet14", "resnet8", "[1,2,4]"
BASE_METHODS = ("kd", "dkd", "nkd", "ttm", "wttm", "rld", "abkd")
DEFAULT_METHODS = ("alone", "kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd")
# The quickstart's: KD has none (as the authors'), DKD/NKD 2 of 8 epochs for their 20 of 240; RLD's recipe has DKD's
# 20 of 240 and maps the same way; TTM, WTTM and ABKD have none.
WARMUP = {"kd": 0, "dkd": 2, "nkd": 2, "ttm": 0, "wttm": 0, "rld": 2, "abkd": 0}


def run_params(method: str | None, scales: str, seed: int, args, standardized: bool = False) -> dict:
    """One run's parameters; `method=None` is the student alone; `standardized`: with logit standardization."""
    params = dict(dataset="digit_mosaic", teacher=TEACHER, student=STUDENT, method=method or "kd", M=scales,
                  seed=seed, subset=args.subset, data_dir=args.data_dir, output_dir=args.output_dir, device=args.device,
                  figures=False, progress=False)
    if method:
        params["warmup_epochs"] = WARMUP[method]
    if standardized:
        params["logit_standardization"] = True
    return params


def variant_params(variant: str, seed: int, args, scales: str = SD_SCALES) -> dict:
    """The parameters of a variant such as `sd_dkd+ls` for one seed; `scales`: M of an SD variant."""
    plain = variant.removeprefix("sd_")
    return run_params(plain.removesuffix("+ls"), scales if plain != variant else "[1]", seed, args,
                      standardized=plain.endswith("+ls"))


def variant_jobs(variant: str, seed: int, args) -> list[dict]:
    """The runs of one variant and seed: one per M of `--scales` for an SD variant, one for a plain one."""
    scales = args.scales if variant.startswith("sd_") else [SD_SCALES]
    return [variant_params(variant, seed, args, m) for m in scales]


def parse_methods(text: str) -> tuple[str, ...]:
    """`alone,kd,kd+ls,sd_kd,...` -> the variants, each checked: the student alone, or a base method of this
    benchmark, SD or not, +ls or not."""
    known = {"alone", *(f"{sd}{m}{ls}" for m in BASE_METHODS for sd in ("", "sd_") for ls in ("", "+ls"))}
    variants = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in variants if v not in known]
    if bad or not variants:
        raise argparse.ArgumentTypeError(f"{bad[0] if bad else text!r} is not a variant of this benchmark; use "
                                         f"comma-separated alone or {', '.join(BASE_METHODS)}, each of the others "
                                         "optionally with sd_ before and +ls after, e.g. kd,kd+ls,sd_kd,sd_kd+ls.")
    return tuple(dict.fromkeys(variants))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _train(kind: str, params: dict) -> str:
    """One job in a worker process: the teacher, a student alone, or a distillation."""
    if kind == "teacher":
        teacher_source.train_teacher(params)
        return f"teacher {params['teacher']}"
    metrics = experiment.run_vanilla(params) if kind == "alone" else experiment.run(params)
    return f"{metrics['run_name']}: best {metrics['best_top1']:.2f}, last {metrics['last_top1']:.2f}"


def train_all(args) -> None:
    """The teacher first, with students alone (which do not need it) on the other workers meanwhile; then seed by
    seed every variant asked for (and that seed's student alone, if not trained yet), so that a call stopped early
    leaves complete paired comparisons for every seed it finished."""
    cfg = experiment.RunConfig.from_params(run_params("kd", SD_SCALES, 0, args))
    # the teacher sddlib ships is this benchmark's teacher (see above): no run needs to train it
    cached = Path(args.output_dir) / "teachers" / "digit_mosaic" / f"{TEACHER}.pth"
    if not args.subset and shipped_teacher_path("digit_mosaic", TEACHER).is_file():
        cached = shipped_teacher_path("digit_mosaic", TEACHER)
    alone = [run_params(None, "[1]", seed, args) for seed in args.seeds if "alone" in args.methods]
    alone = [p for p in alone if experiment.load_metrics(experiment.vanilla_dir(p, STUDENT) / "metrics.json") is None]
    fillers = alone[:args.jobs - 1] if not cached.is_file() else []
    alone_later = {p["seed"]: p for p in alone[len(fillers):]}
    later = [job for seed in args.seeds
             for job in ([("distill", p) for v in args.methods if v != "alone" for p in variant_jobs(v, seed, args)]
                         + ([("alone", alone_later[seed])] if seed in alone_later else []))]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(args.threads,)) as pool:
        teacher = [pool.submit(_train, "teacher", cfg.to_params())] if not cached.is_file() else []
        pending = [pool.submit(_train, "alone", params) for params in fillers]
        for job in teacher:  # the distillations need it cached
            print(job.result(), "ready", flush=True)
        pending += [pool.submit(_train, kind, params) for kind, params in later]
        for job in pending:
            print(job.result(), flush=True)
    print(f"all runs complete after {time.perf_counter() - started:.0f} s in this call", flush=True)


def m_text(scales) -> str:
    """M as the runs record it: `[1,2,4]`."""
    return "[" + ",".join(map(str, parse_scales(scales))) + "]"


def summary(args) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """This benchmark's runs (the seeds and M asked for), the per-method table (a row per M of an SD variant) and
    the SD gains paired by seed (a row per M, each against the plain method: M=[1])."""
    runs = report.load_runs(Path(args.output_dir) / "digit_mosaic")
    wanted = {"", "[1]", *map(m_text, args.scales)}
    runs = runs[(runs["seed"].isin(args.seeds)) & (runs["student"] == STUDENT) & runs["variant"].isin(args.methods)
                & ((runs["variant"] == "alone") | (runs["teacher"] == TEACHER)) & runs["scales"].isin(wanted)]
    tables, gains = [], []
    for m in map(m_text, args.scales):
        at_m = runs[runs["scales"].isin(["", "[1]", m])]
        table = report.results_table(at_m, "digit_mosaic", published_only=False)
        tables.append(table[(table.teacher == TEACHER) & (table.student == STUDENT)])
        gains.append(report.sd_gains(at_m, "digit_mosaic", published_only=False).assign(M=m))
    return runs, pd.concat(tables).drop_duplicates(["method", "M"]), pd.concat(gains, ignore_index=True)


def per_seed(runs: pd.DataFrame, seeds) -> str:
    """Best and last top-1 of every run, e.g. "KD [1]: 94.10 / 94.10, 93.95 / 93.95, ...", seeds in order."""
    out = []
    for (variant, m), group in runs[runs["variant"] != "alone"].groupby(["variant", "scales"], sort=False):
        by_seed = group.drop_duplicates("seed", keep="last").set_index("seed")
        values = ", ".join(f"{by_seed.loc[s, 'best_top1']:.2f} / {by_seed.loc[s, 'last_top1']:.2f}"
                           if s in by_seed.index else "not run" for s in seeds)
        out.append(f"{report.method_name(variant)} {m}: {values}")
    return "; ".join(out)


def _run_times(runs: pd.DataFrame) -> str:
    """Median wall time per variant, and per M where an SD variant ran at several."""
    medians = runs.groupby(["variant", "scales"], sort=False)["wall_time_s"].median()
    several = runs[runs["sd"]].groupby("variant")["scales"].nunique().gt(1)
    return ", ".join(f"{report.method_name(v).replace('Trained alone', 'student alone')}"
                     f"{f' {m}' if several.get(v, False) else ''} {t / 60:.1f} min" for (v, m), t in medians.items())


def missing_runs(runs: pd.DataFrame, seeds, methods=DEFAULT_METHODS, scales=(SD_SCALES,)) -> str:
    """The runs of this benchmark not complete (yet), e.g. "DKD seeds 1, 2; SD-DKD [1,2,4] seed 2"; empty when
    none."""
    done = set(zip(runs["variant"], runs["scales"], runs["seed"]))
    missing = []
    for variant in methods:
        for m in map(m_text, scales) if variant.startswith("sd_") else ["" if variant == "alone" else "[1]"]:
            left = [s for s in seeds if (variant, m, s) not in done]
            if left:
                name = "student alone" if variant == "alone" else report.method_name(variant)
                name += f" {m}" if variant.startswith("sd_") and len(scales) > 1 else ""
                missing.append(f"{name} seed{'s' if len(left) > 1 else ''} {', '.join(map(str, left))}")
    return "; ".join(missing)


def section(args, runs, table, gains) -> str:
    command = "benchmarks/sd_gain.py " + " ".join(shlex.quote(a) for a in args.argv)
    missing = missing_runs(runs, args.seeds, args.methods, args.scales)
    gain_table = report.format_gains(gains).drop(columns=["Teacher", "Student"])
    if len(args.scales) > 1:
        gain_table.insert(1, "M", gains["M"].to_numpy())
    machine = (f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}"
               + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    lines = [f"{section_title(args)}, {datetime.date.today()}, {machine}", "",
             f"`{command}`", "",
             f"{TEACHER} → {STUDENT} on the digit mosaics (8,000 train / 2,000 test images), the full digit_mosaic "
             f"protocol (8 epochs, batch 64, SGD lr 0.05, x0.1 after epochs 5 and 7, weight decay 5e-4), "
             f"{warmup_text(args.methods)}, each method's loss defaults: the quickstart's defaults (one seed there)"
             + ("; +LS: logit standardization on, with its defaults (KD: T 2, CE 1, KD weight 9; DKD: T 2, alpha 9, "
                "beta 72)" if any(v.endswith("+ls") for v in args.methods) else "") + ". Seeds "
             f"{', '.join(map(str, args.seeds))}; a seed sets the initialisation, the batch order and the crops, and "
             "also draws that seed's mosaics (from the same disjoint train/test scans). One teacher, trained here "
             "under the same protocol (seed 0); its row is its accuracy on each seed's test mosaics. Top-1 (%) on "
             "the test set, mean ± std over seeds (n runs); best = best epoch, last = final epoch.", "",
             report.to_markdown(report.format_table(table)[["Method", "M", "Ours best top-1", "Ours last top-1"]]),
             *([f"Per run (best / last top-1, seeds {' / '.join(map(str, args.seeds))}): "
                f"{per_seed(runs, args.seeds)}.", ""] if len(args.scales) > 1 else []),
             *(["SD gain per base method, paired by seed (SD-X − X of the same seed: mean ± std over seeds):", "",
                report.to_markdown(gain_table)]
               if len(gains) else ["No SD run has its plain counterpart of the same seed here: no SD gain.", ""]),
             *([f"**Not complete when this was recorded: {missing}** (the table's n says what each row rests on; the "
                "same command without --summary-only trains them: complete runs are skipped, the rest resume).", ""]
               if missing else []),
             f"Median wall time per run, as the runs recorded it (trained while other jobs shared the cores: not a "
             f"timing benchmark): {_run_times(runs)}.", ""]
    return "\n".join(lines) + "\n"


def warmup_text(methods) -> str:
    """e.g. "warm-up 2 epochs for DKD and NKD, no warm-up for KD": what each base method run here had."""
    bases = dict.fromkeys(v.removeprefix("sd_").removesuffix("+ls") for v in methods if v != "alone")
    by_length = {}
    for base in bases:
        by_length.setdefault(WARMUP[base], []).append(base.upper())
    names = lambda group: " and ".join([", ".join(group[:-1]), group[-1]] if len(group) > 1 else group)  # noqa: E731
    return ", ".join(f"warm-up {n} epochs for {names(g)}" if n else f"no warm-up for {names(g)}"
                     for n, g in sorted(by_length.items(), reverse=True))


def section_title(args) -> str:
    """The default variants' section is "### sd_gain.py"; another choice of --methods or --scales has its own."""
    title = SECTION if tuple(args.methods) == DEFAULT_METHODS else f"{SECTION} --methods {','.join(args.methods)}"
    return title + (f" --scales {' '.join(map(m_text, args.scales))}" if list(args.scales) != [SD_SCALES] else "")


def record(text: str, title: str = SECTION) -> None:
    """Put the section into benchmarks/results.md, replacing the one an earlier call with the same `title` wrote
    (up to the next '### ' heading)."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(title + ",")), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("### ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    RESULTS.write_text(new)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run (default 0 1 2)")
    parser.add_argument("--methods", type=parse_methods, default=DEFAULT_METHODS,
                        help="comma-separated variants, e.g. kd,kd+ls,sd_kd,sd_kd+ls (+ls: logit standardization; "
                             "alone: the student alone; default alone,kd,sd_kd,dkd,sd_dkd,nkd,sd_nkd)")
    parser.add_argument("--scales", nargs="+", type=m_text, default=[SD_SCALES],
                        help="M of the SD variants, one run per M and seed, e.g. --scales [1,2] [1,2,4] "
                             "(default [1,2,4]; the plain variants are M=[1])")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output-dir", default=str(REPO / "outputs" / "sd_gain"))
    parser.add_argument("--data-dir", default=str(REPO / "data"), help="where the mosaics are cached")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--subset", type=int, default=0, help="first n images only: a smoke test, not the benchmark")
    parser.add_argument("--record", action="store_true", help="write the summary into benchmarks/results.md")
    parser.add_argument("--summary-only", action="store_true", help="train nothing; summarise the runs there are")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs {args.jobs} / --threads {args.threads}: both must be positive integers.")
    if args.record and args.subset:
        parser.error("--record with --subset: a smoke test's numbers are not the benchmark; drop one of them.")
    if not args.summary_only:
        train_all(args)
    runs, table, gains = summary(args)
    if runs.empty:
        sys.exit(f"no complete runs of seeds {args.seeds} under {args.output_dir}; run without --summary-only.")
    text = section(args, runs, table, gains)
    print(text)
    if args.record:
        record(text, section_title(args))
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
