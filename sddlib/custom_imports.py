"""A run's own modules, imported by name in every process that runs it (the `imports` run parameter, like mmengine's
`custom_imports`).

A loss registered with `sddlib.losses.register_loss` (or a model added to `sddlib.models`) exists only in the
process that registered it; `python -m sddlib`, a sweep's notebook kernels, torchrun's workers and submitit's jobs
are other processes. Each of them reads the run's parameters, and `RunConfig.from_params` imports the modules that
`imports` names before it checks the others, so the losses and models they register are known wherever the run is.
A name is found as Python finds any module: from the folder a `python -m` command starts in, PYTHONPATH, or an
installed package.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

from .validators import ConfigError, accepts, parse_list

__all__ = ["import_modules", "imports_parameter"]


def import_modules(names) -> None:
    """Import each module of `names` once per process; one sentence (ImportError) naming a module that cannot be
    found, or that fails while it is imported, and what to do."""
    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
                raise _failed(name, err) from None  # the module itself imports something that is missing
            top = name.split(".")[0]
            raise ImportError(f"imports: module {name!r} cannot be found from {os.getcwd()}; run from the folder that "
                              f"holds {top}.py (or the package {top}/), add that folder to PYTHONPATH, or pip install "
                              "its package.") from None
        except Exception as err:  # noqa: BLE001 - any error inside the user's module: said in one sentence
            raise _failed(name, err) from None


@accepts("a list of module names such as ['my_losses']")
def imports_parameter(name, value) -> tuple:
    """The `imports` run parameter: module names, imported here so that what they register is checked after."""
    modules = tuple(parse_list(name, value, str, "['my_losses']"))
    try:
        import_modules(modules)
    except ImportError as err:
        raise ConfigError(str(err)) from None
    return modules


def _failed(name: str, err: Exception) -> ImportError:
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    at = f" at {where.filename}:{where.lineno}" if where else ""
    return ImportError(f"imports: module {name!r} failed while being imported ({type(err).__name__}: {err}{at}); "
                       "fix the module, or remove it from imports.")
