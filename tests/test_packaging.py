"""Packaging: the plugin's requirements are what it imports; the benchmark's are an extra.

The plugin must work for a user who installs ``pytest-energy`` alone, without the benchmark's
torchvision, torch-pruning and torchao. These tests block those imports in a fresh interpreter
(a meta-path finder that refuses them) and run the plugin there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH_ONLY = ("torchvision", "torch_pruning", "torchao")

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    """
).format(blocked=set(BENCH_ONLY))


def run_blocked(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI and make use 3.11)
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for stop in "<>=!~[ ":
            name = name.split(stop)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def test_the_benchmarks_libraries_are_a_bench_extra_not_requirements() -> None:
    metadata = project()
    required = requirement_names(metadata["dependencies"])
    bench = requirement_names(metadata["optional-dependencies"]["bench"])
    assert {"torchvision", "torch-pruning", "torchao"} <= bench
    assert not bench & required
    # What the plugin imports, and codecarbon for its CPU-power and energy-mix tables.
    assert required == {
        "pytest",
        "torch",
        "nvidia-ml-py",
        "codecarbon",
        "tabulate",
        "scipy",
        "filelock",
    }


def test_the_plugin_imports_and_runs_without_the_benchmarks_libraries(tmp_path: Path) -> None:
    (tmp_path / "test_model.py").write_text(
        textwrap.dedent(
            """
            import torch

            def test_inference(energy):
                model = torch.nn.Linear(4, 2)
                energy.accuracy = 0.5
                with energy.train("fit"):
                    model(torch.ones(8, 4)).sum().backward()
                energy.inference(lambda: model(torch.ones(1, 4)), samples=1)
            """
        )
    )
    result = run_blocked(
        """
        import sys, pytest
        try:
            import torchvision
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("torchvision was not blocked")
        import pytest_energy.plugin, pytest_energy.cli, pytest_energy.meters.counted
        code = pytest.main(["-q", "-p", "no:cacheprovider", "--energy", "--energy-meter",
                            "counted", "--energy-json", "out.json", "test_model.py"])
        assert not {"torchvision", "torch_pruning", "torchao"} & set(sys.modules)
        raise SystemExit(code)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert (tmp_path / "out.json").is_file()


@pytest.mark.parametrize("table", ["cpu", "energy mix"])
def test_codecarbons_tables_are_read_through_its_data_source(table: str) -> None:
    from codecarbon.input import DataSource

    from pytest_energy import carbon
    from pytest_energy.meters import cputime

    if table == "cpu":
        cputime._codecarbon_tdp_table.cache_clear()
        rows = cputime._codecarbon_tdp_table()
        assert len(rows) > 1000 and Path(DataSource().cpu_power_path).is_file()
    else:
        assert carbon._codecarbon_data_file() == Path(DataSource().global_energy_mix_data_path)


def pins() -> dict[str, str]:
    """constraints.txt as {normalised name: version}."""
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pinned[normalise(name)] = version
    return pinned


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def test_constraints_pin_every_requirement_torch_included() -> None:
    metadata = project()
    extras = metadata["optional-dependencies"]
    wanted = requirement_names(metadata["dependencies"] + extras["test"] + extras["bench"])
    pinned = pins()
    assert wanted <= set(pinned), f"not pinned: {sorted(wanted - set(pinned))}; run `make lock`"
    assert "pytest-energy" not in pinned
    assert pinned["torch"] and pinned["torchvision"]


def test_make_installs_with_the_constraints_and_can_refresh_them() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-c $(CONSTRAINTS) -e '.[test,bench]'" in makefile
    assert "CONSTRAINTS ?= constraints.txt" in makefile
    assert "\nlock:" in makefile and "pip freeze" in makefile


def test_this_environment_has_the_pinned_versions() -> None:
    """`make test` installed from constraints.txt: every pinned package present is that version.

    Read from the environment's site-packages, not from whatever ``sys.path`` holds by now
    (importing torch.testing puts setuptools' vendored copies, an older packaging, on it).
    """
    import sysconfig
    from importlib import metadata

    site_packages = sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    installed = {
        normalise(distribution.metadata["Name"]): distribution.version
        for distribution in metadata.distributions(path=site_packages)
    }
    wrong = {
        name: f"{installed[name]} installed, {version} pinned"
        for name, version in pins().items()
        if name in installed and installed[name] != version
    }
    assert not wrong, f"{wrong}: install with `make install` (pip install -c constraints.txt)"
