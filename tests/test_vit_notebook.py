"""The ViT-student notebook, executed headlessly (tiny: a subset, one epoch), and the CIFAR-100 ViT params file."""
import json
from pathlib import Path

import papermill as pm
import pytest
import yaml

from sddlib import experiment, viz
from sddlib.models import create_model

REPO = Path(__file__).resolve().parents[1]
VIT_PARAMS = REPO / "params" / "cifar100" / "vit" / "resnet32x4-DeiT_Tiny_p4-sd_kd.yaml"


@pytest.mark.slow  # executes a notebook
def test_vit_student_notebook(tmp_path, mosaic_dir):
    out = tmp_path / "outputs"
    pm.execute_notebook(str(REPO / "notebooks" / "vit_student.ipynb"), str(tmp_path / "vit.ipynb"), cwd=str(REPO),
                        parameters=dict(subset=64, epochs=1, lr_decay_stages=[1], teacher_epochs=1,
                                        output_dir=str(out), data_dir=str(mosaic_dir)),
                        kernel_name="python3", progress_bar=False)
    metrics = [json.loads(p.read_text()) for p in out.glob("digit_mosaic/*/metrics.json")]
    assert sorted((m["variant"], m["student"]) for m in metrics) == [
        ("alone", "ViT_micro_convstem"), ("kd", "ViT_micro_convstem"), ("sd_kd", "ViT_micro_convstem"),
        ("teacher", "resnet14")]                                       # the teacher trained here, in its own folder
    # the ViT's solver (AdamW, LR warm-up) is recorded as a departure; the teacher's is the dataset's SGD
    vit = [m for m in metrics if m["student"] == "ViT_micro_convstem"]
    assert all(m["departures"]["optimizer"] == ["adamw", "sgd"] for m in vit)
    assert all("optimizer" not in m["departures"] for m in metrics if m["student"] == "resnet14")
    figures = next(out.glob("digit_mosaic/*-sd_kd-*")) / "figures"
    assert all((figures / name).is_file() for name in viz.FIGURE_FILES.values())
    executed = json.loads((tmp_path / "vit.ipynb").read_text())
    text = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                   for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"])
    assert "region logits (2, 10, 21)" in text and "region 0 is the model's own logit: True" in text


def test_vit_params_file_for_cifar100():
    text = VIT_PARAMS.read_text()
    p = yaml.safe_load(text)
    resolved = experiment.resolve_params(p)
    assert (resolved["teacher"], resolved["student"], resolved["M"]) == ("resnet32x4", "DeiT_Tiny_p4", "[1,2,4]")
    assert "NOT a paper table row" in text and "logit-standardization" in text and '-p M "[1]"' in text
    model = create_model(p["student"], num_classes=100)
    assert model.patch_embed.grid_size == (8, 8) and 5.3e6 < sum(t.numel() for t in model.parameters()) < 5.5e6
    assert VIT_PARAMS not in set((REPO / "params").glob("*/*.yaml"))   # outside the paper grid tests/test_params.py checks
