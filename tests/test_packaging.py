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


@pytest.mark.slow  # generates the mosaics and trains
def test_readme_own_pair_example_runs(tmp_path):
    """The README's example stays true (shortened: a small subset, one epoch): the authors' SGD, figures."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"## Your own teacher and student\n\n```python\n(.*?)```", readme, re.S).group(1)
    for old, new in (("dls = digit_mosaic(bs=64)", f"dls = digit_mosaic({str(tmp_path)!r}, bs=64, subset=128)"),
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
    assert len(list((tmp_path / "f").glob("*.png"))) == 6
