"""Changing `method` on a params file (issue 38): each value the file holds only because it was the recipe of the
method it was written for (its `recipe`) takes the new method's registered recipe; a value that is not that recipe's
stays. One rule for `python -m sddlib`, a sweep and papermill, which all see the file merged with the -p values; the
run's first lines say what was taken (a sweep's trained run: tests/test_imports_param.py, the CIFAR-100 template)."""
import json
from pathlib import Path

import yaml
from click.testing import CliRunner
from papermill.cli import papermill

from sddlib import __main__ as cli
from sddlib import sweep
from sddlib.config import RunConfig
from sddlib.experiment import notebook_params
from sddlib.preflight import run_warnings

REPO = Path(__file__).resolve().parents[1]
KD_FILE = REPO / "params" / "cifar100" / "resnet32x4-ShuffleV1-sd_kd.yaml"
LOSS_VALUES = ("ce_weight", "kd_weight", "warmup_epochs", "T", "alpha", "beta", "gamma")
DKD = dict(ce_weight=1.0, kd_weight=1.0, warmup_epochs=20, T=4.0, alpha=1.0, beta=8.0, gamma=None)
TOOK_DKD = ("method dkd replaced the values that were kd's recipe (recipe: kd) by its own: ce_weight 1 (was 0.1), "
            "kd_weight 1 (was 0.9), warmup_epochs 20 (was 0)")


def loss_values(cfg: RunConfig) -> dict:
    return {k: cfg[k] for k in LOSS_VALUES}


def test_the_command_line_on_an_authors_kd_file():
    kd = RunConfig.from_params(cli.load_params([KD_FILE], []))
    assert kd.recipe == "kd" and (kd.ce_weight, kd.kd_weight, kd.warmup_epochs) == (0.1, 0.9, 0)
    assert run_warnings(kd) == []                                       # its own method: nothing to say
    dkd = RunConfig.from_params(cli.load_params([KD_FILE], [("method", "dkd")]))
    assert loss_values(dkd) == DKD and dkd.recipe == "dkd"
    assert run_warnings(dkd)[0] == f"{TOOK_DKD}, T 4 (was 4)."
    kept = RunConfig.from_params(cli.load_params([KD_FILE], [("method", "dkd"), ("kd_weight", "2")]))
    assert loss_values(kept) == {**DKD, "kd_weight": 2.0}
    assert run_warnings(kept)[0].endswith("; kept as given: kd_weight 2.")


def test_a_sweep_plans_the_same_values(tmp_path):
    for overrides, want in (({"method": "dkd"}, DKD), ({"method": "dkd", "kd_weight": 2}, {**DKD, "kd_weight": 2.0})):
        job = sweep.plan(KD_FILE, {**overrides, "output_dir": str(tmp_path)})
        assert loss_values(RunConfig.from_params(job["params"])) == want   # what its notebook is given


def test_papermill_merges_first_and_the_notebook_takes_the_same_values(tmp_path):
    """`papermill cifar100.ipynb -f FILE -p method dkd`: the parameters it injects, run through the notebook's own
    parameters cell and `notebook_params`, as its kernel would (prepared only: nothing trains)."""
    def notebook_config(*extra) -> RunConfig:
        out = tmp_path / "prepared.ipynb"
        done = CliRunner().invoke(papermill, [str(REPO / "notebooks" / "cifar100.ipynb"), str(out), "-f",
                                              str(KD_FILE), "-p", "method", "dkd", *extra, "--prepare-only"])
        assert done.exit_code == 0, done.output
        cells = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
        namespace = {}
        for tags in (["parameters"], ["injected-parameters"]):
            exec("".join(next(c for c in cells if c["metadata"].get("tags") == tags)["source"]), namespace)
        return notebook_params(namespace, dataset="cifar100")
    assert loss_values(notebook_config()) == DKD
    assert loss_values(notebook_config("-p", "kd_weight", "2")) == {**DKD, "kd_weight": 2.0}


def test_only_the_old_recipes_values_give_way():
    file = yaml.safe_load(KD_FILE.read_text())
    ttm = RunConfig.from_params({**file, "method": "ttm"})              # a loss without T: T goes, unread, unsaid
    assert loss_values(ttm) == dict(ce_weight=1.0, kd_weight=45.0, warmup_epochs=0, T=None, alpha=None, beta=None,
                                    gamma=0.1) and ttm.ignored == {}
    assert "no T (was 4; ttm does not read it)" in run_warnings(ttm)[0]
    as_given = RunConfig.from_params({**file, "method": "dkd", "recipe": None})   # no recipe: every value stays
    assert (as_given.ce_weight, as_given.kd_weight, as_given.warmup_epochs) == (0.1, 0.9, 0)
    assert run_warnings(as_given) == []
    baseline = yaml.safe_load((REPO / "params/imagenet/ResNet50-MobileNetV1-kd.yaml").read_text())
    imagenet = RunConfig.from_params({**baseline, "method": "dkd"})    # CE/KD 0.5 and T 1 are not KD's recipe
    assert (imagenet.ce_weight, imagenet.kd_weight, imagenet.T, imagenet.warmup_epochs) == (0.5, 0.5, 1.0, 20)
    ls_file = REPO / "params/cifar100/logit_standardization/resnet32x4-ShuffleV2-sd_kd+ls.yaml"
    ls = RunConfig.from_params({**yaml.safe_load(ls_file.read_text()), "method": "dkd"})   # KD's recipe under LS
    assert loss_values(ls) == dict(ce_weight=1.0, kd_weight=1.0, warmup_epochs=20, T=2.0, alpha=9.0, beta=72.0,
                                   gamma=None)
    back = RunConfig.from_params({**file, "method": "dkd"}).replace(method="kd")   # a resolved run changes alike
    assert loss_values(back) == loss_values(RunConfig.from_params(file))
    nkd_file = yaml.safe_load((REPO / "params/cifar100/resnet32x4-ShuffleV1-sd_nkd.yaml").read_text())
    kd = RunConfig.from_params({**nkd_file, "method": "kd"})           # NKD's gamma and exclude_target go too
    assert loss_values(kd) == dict(ce_weight=0.1, kd_weight=0.9, warmup_epochs=0, T=4.0, alpha=None, beta=None,
                                   gamma=None) and kd.ignored == {} and kd.exclude_target is None


def test_the_rule_is_listed_with_the_parameters(capsys):
    assert cli.main(["--params"]) == 0
    listed = capsys.readouterr().out
    entry = listed[listed.index("\nrecipe (str, default None)\n"):listed.index("\nlogit_standardization (")]
    assert "when `method` names another, each value equal to that method's registered recipe takes `method`'s own" \
           in entry and "so -p method X runs X's recipe; docs/losses.md" in entry
    assert "accepts: None or one of 'kd', 'dkd', 'nkd'" in entry
