"""One HTML page of every run under an outputs folder, to open in a browser with no server and no network:
the tables of `sddlib.report.dataset_tables` (the paper comparison with runs as published only, the SD gain paired
by seed, our rows for data and methods the paper has no numbers for, the runs that depart listed apart), each run
linked to its folder and headed by its method, its figures as thumbnails.

    python -m sddlib.report_page outputs            # -> outputs/report.html (also `make report`)

The page is one file: thumbnails are embedded (PNG data URIs, ~240 px wide) and link to the full figures;
links to run folders are relative, so the page keeps working when the outputs folder moves with it.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import report
from .startup import freeze_imports

__all__ = ["write_report", "THUMBNAIL_WIDTH"]

THUMBNAIL_WIDTH = 240  # pixels
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
p.legend { font-size: 0.85em; color: #555; max-width: 70em; }
figure { display: inline-block; margin: 0 0.5em 0.5em 0; font-size: 0.75em; } img { border: 1px solid #ddd; }
"""
# the columns of a table shown left-aligned (the others hold numbers)
_TEXT_COLUMNS = {"Teacher", "Student", "Method", "M", "Teacher from", "Departures", "Run", "Runs", "Protocol",
                 "Missing"}


def _table(frame: pd.DataFrame, table_id: str, links: list[str] | None = None) -> str:
    """A table of strings (escaped); `links`: per row, ready HTML for a last "Runs" column."""
    columns = list(frame.columns) + (["Runs"] if links is not None else [])
    head = "".join(f'<th class="{"text" if c in _TEXT_COLUMNS else "num"}">{html.escape(str(c))}</th>'
                   for c in columns)
    rows = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = [f'<td class="{"text" if c in _TEXT_COLUMNS else "num"}">{html.escape(str(v))}</td>'
                 for c, v in zip(frame.columns, row)]
        if links is not None:
            cells.append(f'<td class="text">{links[i]}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _href(target: Path, page: Path) -> str:
    return html.escape(Path(os.path.relpath(target, page.parent)).as_posix(), quote=True)


def _run_link(name, metrics_path, page: Path) -> str:
    return f'<a href="{_href(Path(metrics_path).parent, page)}/">{html.escape(str(name))}</a>'


def _run_links(runs: pd.DataFrame, page: Path) -> str:
    return ", ".join(_run_link(n, p, page) for n, p in zip(runs["run_name"], runs["path"]))


def _rows_runs(table: pd.DataFrame, runs: pd.DataFrame) -> list[pd.DataFrame]:
    """The runs behind each row of `report.results_table`: the pair's runs for the teacher row, the student's
    runs alone for the student row, the method's runs otherwise (as published: the table counts only those)."""
    out = []
    for row in table.itertuples(index=False):
        pair = (runs["teacher"] == row.teacher) & (runs["student"] == row.student)
        if row.method == "teacher":
            sel = runs[pair]
        elif row.method == "student":
            sel = runs[(runs["variant"] == "alone") & (runs["student"] == row.student)]
        else:
            sel = runs[pair & (runs["variant"] == row.method)]
        out.append(sel)
    return out


def _thumbnail(png: Path) -> str | None:
    """The figure shrunk to THUMBNAIL_WIDTH as a PNG data URI (None when the file cannot be read)."""
    from PIL import Image
    try:
        with Image.open(png) as image:
            image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH * 4))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG", optimize=True)
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(run_dir: Path, page: Path) -> str:
    from .viz.run_figures import FIGURE_FILES
    shown = []
    for key, name in FIGURE_FILES.items():
        png = run_dir / "figures" / name
        if png.is_file() and (uri := _thumbnail(png)):
            shown.append(f'<figure><a href="{_href(png, page)}"><img src="{uri}" alt="{html.escape(key)}" '
                         f'width="{THUMBNAIL_WIDTH}"></a><figcaption>{html.escape(key)}</figcaption></figure>')
    return "".join(shown)


def _run_section(runs: pd.DataFrame, page: Path) -> str:
    """Every run of a dataset: what it is, its numbers, where it departs, its figures."""
    parts = []
    for run in runs.sort_values(["teacher", "student", "variant", "seed"], na_position="first").itertuples():
        folder = Path(run.path).parent
        method = report.method_name(run.variant)
        title = f"{run.run_name}: {method}" + (f" M={run.scales}" if run.scales else "") + f", seed {run.seed}"
        numbers = (f"best top-1 {run.best_top1:.2f} (epoch {run.best_epoch}), last {run.last_top1:.2f}"
                   + ("" if pd.isna(run.teacher_top1) else f", teacher {run.teacher_top1:.2f}"))
        parts.append(f'<h4 id="run-{html.escape(str(run.run_name))}"><a href="{_href(folder, page)}/">'
                     f'{html.escape(title)}</a></h4><p>{html.escape(numbers)}; {html.escape(run.departures)}</p>'
                     f'{_figures(folder, page)}')
    return "".join(parts)


def _paper_line(dataset: str, page: Path) -> str:
    """A paper table with none of our runs: one line that links to the paper's numbers (sddlib's reference copy)."""
    from importlib import resources
    numbers = Path(str(resources.files("sddlib.reference").joinpath("paper_results.csv")))
    return (f'<p id="{dataset}">{html.escape(report.title(dataset))}: no runs of ours yet; the SDD paper\'s '
            f'numbers: <a href="{_href(numbers, page)}">paper_results.csv</a>.</p>')


def _dataset_section(runs: pd.DataFrame, dataset: str, page: Path) -> str:
    """The dataset's tables (`report.dataset_tables`: for data without paper numbers our rows lead), each row of
    runs linked to its folders, then every run with its figures."""
    mine = runs[runs["dataset"] == dataset] if len(runs) else runs
    out = []
    for table in report.dataset_tables(runs, dataset):
        links = None
        if table.key == "results":
            shown = mine[mine["as_published"].astype(bool)] if report.paper_has_numbers(dataset) else mine
            links = [_run_links(sel, page) for sel in _rows_runs(table.numbers, shown)]
        elif table.key == "departures":
            links = [_run_link(n, p, page) for n, p in zip(table.numbers["run_name"], table.numbers["path"])]
        tag, anchor = ("h2", f' id="{dataset}"') if not out else ("h3", "")  # the first table heads the section
        out.append(f"<{tag}{anchor}>{html.escape(table.title)}</{tag}>")
        if table.key == "results" and report.paper_has_numbers(dataset):
            out.append(f'<p class="legend">{html.escape(report.legend(dataset))}</p>')
        out.append(_table(table.shown, f"{dataset}-{table.key}", links))
    if len(mine):
        out += [f"<h3>{html.escape(report.title(dataset))}: every run and its figures</h3>", _run_section(mine, page)]
    return "".join(out)


def write_report(outputs_dir, path=None) -> Path:
    """Write the page (default `<outputs_dir>/report.html`) from every complete run under `outputs_dir`; the
    paper's three datasets always appear (their paper numbers, with ours where there are runs)."""
    outputs_dir = Path(outputs_dir)
    page = Path(path) if path is not None else outputs_dir / "report.html"
    runs = report.load_runs(outputs_dir)
    # the datasets we have runs of first; a paper table with none of ours is one line at the end
    ours = set(runs["dataset"]) if len(runs) else set()
    datasets = sorted(report.table_datasets(runs), key=lambda d: d not in ours)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    toc = " · ".join(f'<a href="#{d}">{html.escape(report.title(d))}</a>' for d in datasets)
    body = "".join(_dataset_section(runs, d, page) if d in ours else _paper_line(d, page) for d in datasets)
    text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>SDD runs: {html.escape(str(outputs_dir))}'
            f"</title><style>{_STYLE}</style></head><body><h1>Scale Decoupled Distillation: runs under "
            f"{html.escape(str(outputs_dir))}</h1><p>{len(runs)} complete runs, written {stamp}. {toc}</p>"
            f"{body}</body></html>\n")
    page.parent.mkdir(parents=True, exist_ok=True)
    partial = page.with_name(page.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(page)  # a reader never sees half a page
    return page


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sddlib.report_page", description=__doc__.split("\n\n")[0])
    ap.add_argument("outputs_dir", nargs="?", default="outputs", help="the folder runs were written to")
    ap.add_argument("-o", "--output", help="the page to write (default: <outputs_dir>/report.html)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not Path(args.outputs_dir).is_dir():
        print(f"error: outputs_dir={args.outputs_dir!r} is not a folder; give the folder your runs were written to "
              "(output_dir, default 'outputs').")
        return 2
    print(f"wrote {write_report(args.outputs_dir, args.output)}")
    return 0


if __name__ == "__main__":
    freeze_imports()   # its modules, loaded above, out of the collector's reach (sddlib.startup)
    raise SystemExit(main())
