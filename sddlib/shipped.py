"""The files sddlib reads at run time that are not Python: the params files (every run's published experiment, for
its departures) and the notebooks (what a sweep runs). In a checkout (`pip install -e .`, or PYTHONPATH) they are the
repository's own params/ and notebooks/; a wheel (`pip install .`) carries the same files inside the package as
sddlib/params/ and sddlib/notebooks/ (pyproject.toml maps the two folders there). The reference tables
(sddlib/reference/) and the shipped teachers (sddlib/teachers/) live in the package in both cases.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGE", "shipped_folder", "checkout"]

PACKAGE = Path(__file__).resolve().parent


def shipped_folder(name: str) -> Path:
    """`params` or `notebooks`: the installed copy inside the package, else the checkout's folder."""
    installed = PACKAGE / name
    return installed if installed.is_dir() else PACKAGE.parent / name


def checkout() -> Path | None:
    """The repository root sddlib runs from, or None when it is installed from a wheel."""
    return None if (PACKAGE / "notebooks").is_dir() else PACKAGE.parent
