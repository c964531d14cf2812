"""Every `papermill ...`, `python -m sddlib ...`, `python -m sddlib.sweep ...` and `python -m sddlib.report_page`
command written in README.md,
docs/*.md and the notebooks' own text resolves: its parameters reach the notebook (or the command line) as
papermill / argparse deliver them, and the notebook's first cell after the parameters (where every notebook
checks them, before any work) accepts them. No training; in this process."""
import contextlib
import glob
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from papermill.cli import _resolve_type
from papermill.cli import papermill as papermill_cli
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from sddlib import report_page, sweep
from sddlib.__main__ import load_params, parse
from sddlib.config import ConfigError, RunConfig

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "notebooks").glob("*.ipynb"))]
COMMAND = re.compile(r"(?:\S*/)?(?:papermill\s+\S+\.ipynb|python\s+-m\s+sddlib\b|torchrun\s.*?-m\s+sddlib\b).*")


def _texts(path: Path):
    """Inline code spans and code-block lines of a Markdown file, or every line of a notebook's cells."""
    if path.suffix == ".ipynb":
        for cell in json.loads(path.read_text())["cells"]:
            spans = re.findall(r"`([^`\n]+)`", "".join(cell["source"])) if cell["cell_type"] == "markdown" else []
            yield from spans or "".join(cell["source"]).splitlines()
        return
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            yield line
        else:
            yield from re.findall(r"`([^`\n]+)`", line)


def documented_commands():
    found = []
    for path in DOCUMENTS:
        for text in _texts(path):
            match = COMMAND.search(text)
            if match and "<" not in match.group(0):          # `<teacher>`-style templates are not commands
                found.append(pytest.param(match.group(0), id=f"{path.name}: {match.group(0)[:70]}"))
    return found


COMMANDS = documented_commands()


def test_the_documents_hold_commands():
    assert len(COMMANDS) >= 15 and any("seeds" in c.values[0] for c in COMMANDS)


def _notebook_resolves(argv):
    """papermill's own option parsing and merging, its injected parameters cell, then the notebook's checks (every
    key of a params file taken by the notebook, as the sweep requires); returns the notebook's namespace."""
    ctx = papermill_cli.make_context("papermill", list(argv))
    opts = ctx.params
    given = {}   # what the command sets by name (a params file may also hold keys its notebook fixes, e.g. dataset)
    for text in opts["parameters_yaml"]:
        given.update(yaml.safe_load(text) or {})
    given.update({k: _resolve_type(v) for k, v in opts["parameters"]})
    given.update(dict(opts["parameters_raw"]))
    params = {}
    for path in opts["parameters_file"]:
        params.update(yaml.safe_load(Path(path).read_text()) or {})
    params.update(given)
    sweep.check_notebook_takes(list(params), Path(opts["notebook_path"]), params.get("dataset", "cifar100"))
    notebook = load_notebook_node(opts["notebook_path"])
    defined = {}
    first = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.tags)
    exec(notebook.cells[first].source, defined)
    unknown = sorted(set(given) - set(defined))
    assert not unknown, f"{opts['notebook_path']} has no parameter {unknown}"
    notebook = parameterize_notebook(notebook, params)
    code = [c.source for c in notebook.cells[first:] if c.cell_type == "code"]   # parameters, injected, checks
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for source in code[:3]:
            exec(source, namespace)
    return namespace


def _command_line_resolves(argv):
    args = parse(argv)
    RunConfig.from_params(load_params(args.parameters_file, args.parameter))


def _tune_resolves(argv):
    from sddlib import tune
    args = tune.parse(argv)
    tune.plan_study(load_params(args.parameters_file, args.parameter), args)


def _sweep_resolves(argv):
    # the shell's glob, where it stands; the plan resolves, and `--estimate` would time every distinct configuration
    # at full size (tests/test_run_cost.py covers it on the mosaics)
    argv = [f for a in argv if a != "--estimate" for f in (sorted(glob.glob(a)) if "*" in a else [a])]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert sweep.main(argv + ["--dry-run"]) == 0, err.getvalue()


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_resolves(command, monkeypatch):
    monkeypatch.chdir(REPO)   # the documents' commands run from the repository root
    words = shlex.split(command.replace("$MASTER", "node0"), comments=True)
    tool = next(i for i, w in enumerate(words) if w.endswith(("papermill", "python", "torchrun")))
    if words[tool].endswith("papermill"):
        _notebook_resolves(words[tool + 1:])
    else:
        module = words.index("-m")
        rest = words[module + 2:]
        if words[module + 1] == "sddlib.report_page":
            report_page.parser().parse_args(rest)
        elif words[module + 1] == "sddlib.tune":
            _tune_resolves(rest)
        else:
            _sweep_resolves(rest) if words[module + 1] == "sddlib.sweep" else _command_line_resolves(rest)


@pytest.mark.parametrize("value", ["[0, 1", "[0, 'a']", "[]"])
def test_a_list_parameter_that_is_not_a_list_of_seeds_is_one_sentence(value, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"^seeds=.* is not accepted; seeds must be a non-empty list of integers"):
        _notebook_resolves(["notebooks/quickstart.ipynb", "out.ipynb", "-p", "seeds", value])


@pytest.mark.parametrize("given, seeds, methods", [
    ([], [0], ["kd"]), (["-p", "seed", "1"], [1], ["kd"]), (["-p", "method", "dkd"], [0], ["dkd"]),
    (["-p", "seeds", "[2, 0]", "-p", "methods", '["kd", "nkd"]'], [2, 0], ["kd", "nkd"])])
def test_the_quickstart_takes_seed_and_method_as_every_run_does(given, seeds, methods, monkeypatch):
    """`seed` and `method` run as in a params file; `seeds` and `methods`, when given, list every one to run."""
    monkeypatch.chdir(REPO)
    namespace = _notebook_resolves(["notebooks/quickstart.ipynb", "out.ipynb", *given])
    assert namespace["seeds"] == seeds and namespace["methods"] == methods
    assert sorted(namespace["plan"]) == sorted((m, scales, s) for s in seeds for m in methods
                                               for scales in ("[1]", "[1,2,4]"))
    base = namespace["base"]   # the run shown: seed and method
    assert (base.seed, base.method, base.scales) == (namespace["seed"], namespace["method"], (1, 2, 4))


@pytest.mark.parametrize("given, sentence", [
    (["-p", "seed", "1", "-p", "seeds", "[0, 2]"], "seed=1 is not in seeds=[0, 2]; seeds lists every one to run "
     "and must hold seed (the run shown, and the one a sweep waits for): add 1 to seeds or set seed to one of them."),
    (["-p", "methods", '["dkd", "nkd"]'], "method='kd' is not in methods=['dkd', 'nkd']; methods lists every one to "
     "run and must hold method (the run shown, and the one a sweep waits for): add 'kd' to methods or set method to "
     "one of them.")])
def test_a_seed_or_method_outside_its_list_is_one_sentence(given, sentence, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as err:
        _notebook_resolves(["notebooks/quickstart.ipynb", "out.ipynb", *given])
    assert str(err.value) == sentence
