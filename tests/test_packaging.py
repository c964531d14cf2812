"""environment.yml, pyproject.toml, the Makefile and CI entry point stay in step; sddlib's imports run one way."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_this_project_with_every_extra():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    major, minor = (int(x) for x in python.split("=")[1].split(".")[:2])
    low = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", pyproject["requires-python"]).group(1).split("."))
    assert (major, minor) >= low[:2]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert len(pip) == 1, "dependencies belong in pyproject.toml, not in environment.yml"
    extras = re.fullmatch(r'-e "?\.\[([\w,]+)\]"?', pip[0]).group(1).split(",")
    assert set(extras) == set(pyproject["optional-dependencies"])


def test_runtime_dependencies_are_lower_bounds_only():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in pyproject["dependencies"] + sum(pyproject["optional-dependencies"].values(), []):
        assert "==" not in requirement and "<" not in requirement, requirement


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


@pytest.mark.slow  # trains
def test_readme_own_pair_example_runs(tmp_path, mosaic_dir):
    """The README's example stays true (shortened: a small subset, one epoch): the authors' SGD, figures."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"## Your own teacher and student \(Python\)\n\n```python\n(.*?)```", readme, re.S).group(1)
    for old, new in (("dls = digit_mosaic(bs=64)", f"dls = digit_mosaic({str(mosaic_dir)!r}, bs=64, subset=128)"),
                     ("epochs=8)", "epochs=1)"), ("learn.fit(8)", "learn.fit(1)"),
                     ("learn.distillation.stats_frame()", "frame = learn.distillation.stats_frame()"),
                     ('save_learner_figures(learn, "figures")',
                      f"save_learner_figures(learn, {str(tmp_path / 'f')!r})")):
        assert old in code, old
        code = code.replace(old, new)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["frame"]) == 1 and "complementary_gr_lw@4" in namespace["frame"].columns
    assert type(namespace["learn"].opt.opt).__name__ == "SGD"                 # the authors' solver, not Adam
    from sddlib.viz import FIGURE_FILES
    assert {p.name for p in (tmp_path / "f").glob("*.png")} == set(FIGURE_FILES.values())


def _lint_imports(cwd: Path, *config) -> subprocess.CompletedProcess:
    """The import-linter command of this environment, on the contract in pyproject.toml (or `config`)."""
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache", *config]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(cwd)})


def _layers() -> list[str]:
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [name.strip() for layer in contract["layers"] for name in layer.split(":")]


def test_imports_inside_sddlib_keep_to_the_declared_layers():
    done = _lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_every_sddlib_module_sits_on_a_layer():
    placed = set(_layers())
    modules = {p.stem if p.name != "__init__.py" else p.parent.name for p in (REPO / "sddlib").glob("*/__init__.py")}
    modules |= {p.stem for p in (REPO / "sddlib").glob("*.py") if p.name != "__init__.py"}
    unplaced = sorted(m for m in modules - {"reference"} if f"sddlib.{m}" not in placed)
    assert not unplaced, f"modules on no layer of pyproject's import-linter contract: {unplaced}"


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "sddlib", tmp_path / "sddlib", ignore=shutil.ignore_patterns("__pycache__", "*.pth"))
    with open(tmp_path / "sddlib" / "losses.py", "a") as f:
        f.write("\nfrom . import experiment  # noqa: E402  (a foundation importing the run: not allowed)\n")
    (tmp_path / ".importlinter.toml").write_text((REPO / "pyproject.toml").read_text())
    done = _lint_imports(tmp_path, str(tmp_path / ".importlinter.toml"))
    assert done.returncode != 0 and "sddlib.losses is not allowed to import sddlib.experiment" in done.stdout
