"""What the benchmark scripts share: the heading that names the machine and its load, and appending a result
table to benchmarks/results.md."""
from __future__ import annotations

import os
import platform
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).with_name("results.md")


def heading(title: str, load: float) -> str:
    return (f"\n### {title}, {date.today()}, {platform.machine()} CPU, {os.cpu_count()} cores, load {load:.2f} "
            "at the start\n\n")


def publish(table: str, record: bool) -> None:
    """Print the table, and append it to results.md when asked to."""
    print(table)
    if record:
        with RESULTS.open("a") as f:
            f.write(table)
