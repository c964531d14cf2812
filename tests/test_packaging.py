"""environment.yml, pyproject.toml, the Makefile and CI entry point stay in step; sddlib's imports run one way."""
import ast
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


def _sddlib_imports() -> dict[str, set[str]]:
    """Every sddlib module and the sddlib modules it imports, at the top or inside a function."""
    root = REPO / "sddlib"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)

    def known(name):  # `from .data import x` imports sddlib.data, `from . import runs` the module sddlib.runs
        while name not in modules:
            name = name.rsplit(".", 1)[0]
        return name
    graph = {}
    for name, (path, package) in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                here = name.split(".") if package else name.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                if base.split(".")[0] == "sddlib":
                    graph[name] |= {known(f"{base}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                graph[name] |= {known(a.name) for a in node.names if a.name.split(".")[0] == "sddlib"}
    return graph


def test_imports_inside_sddlib_run_one_way():
    graph = _sddlib_imports()
    assert "sddlib.runs" in graph["sddlib.distributed"] and "sddlib.distributed" in graph["sddlib.experiment"]

    def cycle_from(start, path):
        for nxt in sorted(graph[path[-1]] - {path[-1]}):
            if nxt == start:
                return path + [nxt]
            if nxt not in path and (found := cycle_from(start, path + [nxt])):
                return found
        return None
    cycles = [c for c in (cycle_from(m, [m]) for m in sorted(graph)) if c]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])
