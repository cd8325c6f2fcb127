"""Checks made once, when a run is configured, so bad input fails before any test runs.

- output paths (``--energy-json``, ``--energy-markdown``, ``--energy-plot``) that could never be
  written (a parent that is a regular file, a directory given as a file), and a baselines
  directory that is a file (else read as "no baselines");
- a rootdir that pytest chose from one of pytest-energy's own option values (pytest reads
  ``--energy-baselines /abs/dir``, given as two arguments, as a test path while it decides the
  rootdir), which would key every node id differently and make ``--energy-save
  --energy-prune`` re-key the whole baseline file;
- error messages about a setting given in the ini file name the ini key, not the flag;
- the meters' one-time costs (imports, dispatch-mode set-up, first counter reads) are paid
  by a throw-away window before the first test, so the first test's TEC does not carry them.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_energy.errors import ConfigError, EnergyError
from pytest_energy.files import check_output_path
from pytest_energy.meters.base import Meter

OUTPUT_OPTIONS = ("--energy-json", "--energy-markdown", "--energy-plot")
_FLAG = re.compile(r"--energy-[a-z0-9-]+")


def check_output_options(config: pytest.Config) -> None:
    """Refuse an output path that cannot be a file, before hours of training."""
    for option in OUTPUT_OPTIONS:
        value = config.getoption(option, None)
        if value:
            check_output_path(value, option)
    baselines = config.getoption("--energy-baselines", None) or config.getini("energy_baselines")
    if baselines and config.getoption("--energy", False):
        directory = Path(config.rootpath, baselines)
        if directory.exists() and not directory.is_dir():
            raise ConfigError(
                f"--energy-baselines {baselines}: {directory} is a file, not a directory of "
                f"baselines; point it at a directory (default: baselines/)"
            )


def check_rootdir_not_moved(config: pytest.Config) -> None:
    """Refuse a run whose rootdir pytest took from a pytest-energy option's value.

    Node ids are relative to the rootdir, and baselines are keyed by node id: a moved rootdir
    makes every test "new" and lets ``--energy-save --energy-prune`` drop every entry.
    """
    if not config.getoption("--energy", False) or hasattr(config, "workerinput"):
        return  # xdist workers take the controller's rootdir, checked there
    try:
        from _pytest.config.findpaths import determine_setup

        option = config.option
        rootpath = determine_setup(
            inifile=getattr(option, "inifilename", None),
            override_ini=getattr(option, "override_ini", None),
            args=[str(arg) for arg in getattr(option, "file_or_dir", None) or []],
            rootdir_cmd_arg=getattr(option, "rootdir", None) or None,
            invocation_dir=config.invocation_params.dir,
        )[0]
    except Exception:  # pytest's private helper changed: nothing to compare with
        return
    if rootpath == config.rootpath:
        return
    arguments = list(config.invocation_params.args)
    moved_by = [
        f"{flag} {value}"
        for flag, value in itertools.pairwise(arguments)
        if _FLAG.fullmatch(str(flag))
        and not str(value).startswith("-")
        and (config.invocation_params.dir / str(value)).exists()
    ]
    raise ConfigError(
        f"pytest chose the rootdir {config.rootpath} instead of {rootpath} because it read "
        f"{' and '.join(moved_by) or 'an option value'} as a test path; node ids (and so "
        f"baseline keys) would change. Write the option with '=' "
        f"(e.g. --energy-baselines=/path), or pass --rootdir={rootpath}"
    )


def name_ini_source(config: pytest.Config, message: str) -> str:
    """Rewrite ``--energy-x`` in an error to the ini key when the value came from the ini file."""
    match = _FLAG.search(message)
    if match is None:
        return message
    flag = match.group(0)
    ini_key = flag[2:].replace("-", "_")
    try:
        given_on_command_line = config.getoption(flag) is not None
        ini_value = config.getini(ini_key)
    except (ValueError, KeyError):
        return message
    if given_on_command_line or not ini_value:
        return message
    where = f"ini {ini_key} in {config.inipath}" if config.inipath else f"ini {ini_key}"
    return message.replace(flag, f"{where} (the ini form of {flag})", 1)


def lifecycle_without_fixture(nodeid: str) -> str:
    """The message for ``@pytest.mark.lifecycle`` on a test that does not take ``energy``."""
    return (
        f"{nodeid}: @pytest.mark.lifecycle but the test does not take the `energy` fixture, "
        f"so nothing is measured; add `energy` to its arguments (or remove the marker)"
    )


def warm_up_meters(meters: Sequence[Meter]) -> None:
    """Open and close one throw-away window per meter before any test runs.

    The first window otherwise pays the meters' own one-time costs (lazy imports, the counted
    meter's dispatch mode and operator tables, first counter reads). A tiny torch operation runs
    inside the window when torch is already imported, so operator dispatch is warm too. Errors
    are left for the first real window to report, with the test's name.
    """
    torch: Any = sys.modules.get("torch")
    if torch is None and any(meter.capabilities.counts_operations for meter in meters):
        with contextlib.suppress(ImportError):
            import torch
    for meter in meters:
        with contextlib.suppress(EnergyError, OSError, ValueError):
            meter.start()
            try:
                if torch is not None:
                    (torch.ones(4, 4) @ torch.ones(4, 4)).sum().item()
            finally:
                meter.stop()
