"""sddlib installed from a wheel (`pip install .`, not the editable checkout; issue 31) finds every file it reads at
run time: the params files (every run's departures), the reference tables, the shipped teacher and the notebooks a
sweep runs; and the wheel's package list is the sddlib/ folders, so a new subpackage cannot be left out of it."""
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

# run in the wheel's environment, from a folder outside the checkout
CHECKS = textwrap.dedent("""
    import sys
    from pathlib import Path
    import yaml
    import sddlib
    from sddlib import report, sweep
    from sddlib.checkpoints import shipped_teacher_path
    from sddlib.config import RunConfig
    from sddlib.departures import PARAMS_DIR, departures
    installed = Path(sddlib.__file__).parent
    assert installed.parent == Path(sys.argv[1]), sddlib.__file__            # the wheel's copy, not the checkout
    assert PARAMS_DIR == installed / "params", PARAMS_DIR
    files = sorted(PARAMS_DIR.rglob("*.yaml"))
    assert len(files) == int(sys.argv[2]), len(files)
    sd_kd = PARAMS_DIR / "cifar100" / "resnet32x4-ShuffleV1-sd_kd.yaml"
    published, found = departures(RunConfig.from_params(yaml.safe_load(sd_kd.read_text())), {"source": "published"})
    assert published == sd_kd and found == {}, found                          # as published: its params file read
    assert len(report.paper_results()) and report.authors_experiments() and len(report.authors_logged_runs())
    assert shipped_teacher_path("digit_mosaic", "resnet14").is_file()
    job = sweep.plan(sd_kd, {"output_dir": "outputs"})
    assert Path(job["notebook"]) == installed / "notebooks" / "cifar100.ipynb" and Path(job["notebook"]).is_file()
    assert sweep.ROOT == Path.cwd()                                           # no checkout: where the sweep starts
    print("wheel ok")
""")


def test_the_wheel_lists_every_package():
    from setuptools import find_packages
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    mapped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(listed) == set(find_packages(str(REPO), include=["sddlib*"])) | set(mapped)
    assert mapped == {"sddlib.params": "params", "sddlib.notebooks": "notebooks"}


@pytest.mark.slow  # builds a wheel and installs it in a new environment (~30 s idle)
def test_a_wheel_install_finds_its_run_time_files(tmp_path):
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # nothing but the new environment's path

    def sh(*command, cwd=tmp_path):
        done = subprocess.run(command, cwd=cwd, env=clean, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
       str(REPO))
    wheel = next((tmp_path / "dist").glob("sddlib-*.whl"))
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    site = Path(sh(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # the project's dependencies (torch, fastai, ...) without installing them again: its site-packages on the path,
    # after the new environment's own (where the wheel's sddlib goes)
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel))
    (tmp_path / "checks.py").write_text(CHECKS)
    count = len(list((REPO / "params").rglob("*.yaml")))
    assert sh(str(python), "checks.py", str(site), str(count)).strip().endswith("wheel ok")
