"""Reading what a run recorded: the layer below `experiment` and `distributed`, which both read a run's
`metrics.json` (the run's own writes go through `checkpoints.write_json`)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_metrics"]


def load_metrics(path) -> dict | None:
    """A finished run's metrics, or None when the file is missing, partial, failed or unreadable."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("status") == "complete" else None
