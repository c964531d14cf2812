"""Checks of one parameter's value, shared by the run configuration (`sddlib.config.RunConfig`) and the loss
registry's hyper-parameters (`sddlib.losses.Hyper`).

A check is called as `check(name, value)` and returns the value (normalised where it says so) or raises
`ConfigError`: one sentence naming the parameter, its value and what is accepted. Its `accepted` text is what
`python -m sddlib --params` shows. Nothing here imports the rest of sddlib.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from pathlib import Path

import yaml

__all__ = ["ConfigError", "fail", "accepts", "range_text", "integer", "real", "optional", "text", "flag", "choice",
           "mapping", "keywords", "parse_list", "one_or_several", "stages", "device_name", "folder_name",
           "auto_or_flag", "names_or_none"]


class ConfigError(ValueError):
    """A parameter that cannot give the run the user asked for (one sentence: what, value, accepted)."""


def fail(name, value, accepted):
    raise ConfigError(f"{name}={value!r} is not accepted; {name} must be {accepted}.")


def accepts(text: str):
    """Label a check with what it accepts (`python -m sddlib --params` shows it)."""
    def label(check):
        check.accepted = text
        return check
    return label


def range_text(kind: str, low=None, high=None, low_open=False, high_open=False) -> str:
    """e.g. 'a finite number > 0 and <= 1', 'an integer >= 1'."""
    text = kind + (f" {'>' if low_open else '>='} {low}" if low is not None else "")
    return text + (f"{' and' if low is not None else ''} {'<' if high_open else '<='} {high}"
                   if high is not None else "")


def _in_range(value, low, high, low_open, high_open) -> bool:
    return (low is None or (value > low if low_open else value >= low)) and \
        (high is None or (value < high if high_open else value <= high))


def integer(low=None, high=None, *, low_open=False, high_open=False, what=None):
    """An int (not a bool) in the range; returned as it is."""
    accepted = what or range_text("an integer", low, high, low_open, high_open)

    @accepts(accepted)
    def check(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or not _in_range(value, low, high, low_open,
                                                                                    high_open):
            fail(name, value, accepted)
        return value
    return check


def real(low=None, high=None, *, low_open=False, high_open=False, what=None):
    """A finite int or float (not a bool) in the range; returned as a float."""
    accepted = what or range_text("a finite number", low, high, low_open, high_open)

    @accepts(accepted)
    def check(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not _in_range(value, low, high, low_open, high_open):
            fail(name, value, accepted)
        return float(value)
    return check


def optional(check):
    """`check`, or None (of a `choice`: its options, or None)."""
    def check_optional(name, value):
        return None if value is None else check(name, value)
    if hasattr(check, "options"):
        check_optional.options = check.options
        return check_optional
    return accepts(check.accepted if check.accepted.startswith("None") else f"None or {check.accepted}")(check_optional)


@accepts("text")
def text(name, value):
    if not isinstance(value, str):
        fail(name, value, "text")
    return value


@accepts("True or False")
def flag(name, value):
    if not isinstance(value, bool):
        fail(name, value, "True or False")
    return value


def choice(options):
    """One of `options` (a registry may grow after the check is made: it is read at each call)."""
    def check(name, value):
        if value not in options:
            close = difflib.get_close_matches(str(value), list(options), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ConfigError(f"{name} {value!r} is unknown{hint}; use one of {', '.join(sorted(options))}.")
        return value
    check.options = options
    return check


@accepts("a mapping of hyper-parameter names to values")
def mapping(name, value):
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        fail(name, value, "a mapping of hyper-parameter names to values, e.g. {'scale': 0.5}")
    return dict(value)


@accepts("None or a mapping of keyword names to values, or its YAML text such as '{img_size: 32}'")
def keywords(name, value):
    """Keyword arguments for a constructor, as a dict ({} for None); papermill's `-p` gives them as text."""
    accepted = "None or a mapping of keyword names to values, or its YAML text such as '{img_size: 32}'"
    parsed = _from_text(name, value, accepted)
    if parsed is None:
        return {}
    if not isinstance(parsed, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in parsed):
        fail(name, value, accepted)
    return dict(parsed)


def _from_text(name, value, accepted):
    """`value`, or what its text says as YAML (papermill's and `python -m sddlib`'s `-p` give text)."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        fail(name, value, accepted)


_ITEMS = {int: "integers", str: "names"}


def parse_list(name: str, value, kind: type, example: str, *, nonempty: bool = False) -> list:
    """A list-valued parameter as a list of `kind`, from a list, a single value, or its text: papermill's `-p`
    and `python -m sddlib -p` pass text (`-p seeds '[0, 1]'`, `-p methods '["kd", "dkd"]'`), read as YAML here.
    The one place such text is parsed, for every notebook and the command line; one sentence when it is not
    a list of `kind` (`example` shows one)."""
    accepted = f"a {'non-empty ' if nonempty else ''}list of {_ITEMS[kind]} such as {example}"
    items = _from_text(name, value, accepted)
    if not isinstance(items, (list, tuple)):
        items = [items]
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in items) or (nonempty and not items):
        fail(name, value, accepted)
    return list(items)


def one_or_several(name: str, value, list_name: str, values, kind: type, example: str) -> list:
    """The runs a notebook makes of a parameter that also has a list form (`seed`/`seeds`, `method`/`methods`):
    `values` (None: not given) when given, else `[value]`. One rule, so that a params file's `seed` is always run:
    the list must hold the single value (the run the notebook shows, and the one a sweep waits for)."""
    if values is None:
        return [value]
    items = list(dict.fromkeys(parse_list(list_name, values, kind, example, nonempty=True)))
    if value not in items:
        raise ConfigError(f"{name}={value!r} is not in {list_name}={items!r}; {list_name} lists every one to run "
                          f"and must hold {name} (the run shown, and the one a sweep waits for): add {value!r} to "
                          f"{list_name} or set {name} to one of them.")
    return items


@accepts("a list of increasing epochs such as [150, 180, 210]")
def stages(name, value):
    """Epochs of a step schedule, as a tuple."""
    accepted = "a list of increasing epochs such as [150, 180, 210]"
    if isinstance(value, str):   # papermill's -p gives "[150, 180]"
        try:
            value = parse_list(name, value, int, "[150, 180, 210]")
        except ConfigError:
            fail(name, value, accepted)
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in value):
        fail(name, value, accepted)
    if any(s < 1 for s in value) or any(b <= a for a, b in zip(value, value[1:])):
        fail(name, value, accepted + " (each >= 1, strictly increasing)")
    return tuple(value)


@accepts("'auto', 'cpu', 'cuda' or 'cuda:N'")
def device_name(name, value):
    """A device name (whether this machine has it: `sddlib.preflight`)."""
    if value in ("auto", "cpu", "cuda") or (isinstance(value, str) and value.startswith("cuda:")
                                            and value[5:].isdigit()):
        return value
    fail(name, value, "'auto', 'cpu', 'cuda' or 'cuda:N'")


@accepts("empty or a plain folder name")
def folder_name(name, value):
    text(name, value)
    if value and (Path(value).name != value or value in (".", "..")):
        fail(name, value, "empty (named from the configuration) or a plain folder name without '/'")
    return value


@accepts("'auto', True or False")
def auto_or_flag(name, value):
    if isinstance(value, str) and value.lower() in ("true", "false"):   # -p in_memory false from the command line
        value = value.lower() == "true"
    if value != "auto" and not isinstance(value, bool):
        fail(name, value, "'auto', True or False")
    return value


def names_or_none(options, example: str):
    """'none', one of `options` or a list of them -> a tuple of names (() for none)."""
    @accepts(f"'none', {', '.join(map(repr, options))} or a list of them")
    def check(name, value):
        names = () if value in (None, "none") else parse_list(name, value, str, example)
        for one in names:
            choice(options)(name, one)
        return tuple(dict.fromkeys(names))
    return check
