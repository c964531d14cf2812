"""environment.yml, pyproject.toml, the Makefile and CI entry point stay in step."""
import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

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
