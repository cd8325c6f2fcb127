"""The whole pytest under torchrun: every rank trains, rank 0 alone reports the sum of the ranks.

One run of ``torchrun --nproc-per-node 2 -m pytest`` on CPU (gloo), each rank's output in its
own log, so the test can tell what rank 0 and rank 1 printed and wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed")

CONFTEST = """
import pytest
import torch.distributed as dist


@pytest.fixture(scope="session", autouse=True)
def process_group():
    dist.init_process_group("gloo")  # torchrun's variables give the rank, size and address
    yield
    dist.destroy_process_group()
"""

DDP_TEST = """
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@pytest.mark.lifecycle(method="ddp-torchrun")
def test_ddp(energy):
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(48, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images = torch.randn(16, 48)  # this rank's share of a global batch of 32
    labels = torch.randint(0, 4, (16,))
    with energy.train("train"):
        for _ in range(4):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    energy.accuracy = 0.5
    energy.inference(lambda: model.module(images), samples=16)  # this rank's own rounds
"""


def rank_logs(log_dir: Path) -> dict[int, str]:
    """Each local rank's stdout, from torchrun's ``--log-dir``/``--redirects`` layout."""
    return {
        int(path.parent.name): path.read_text() for path in log_dir.glob("*/attempt_*/*/stdout.log")
    }


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory) -> tuple[int, dict[int, str], Path]:
    folder = tmp_path_factory.mktemp("torchrun")
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_ddp_torchrun.py").write_text(DDP_TEST)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "--log-dir=logs", "--redirects=3", "-m", "pytest"]
    command += ["-p", "no:cacheprovider", "--energy", "--energy-meter=cputime,counted"]
    command += ["--energy-json=results.json", "--energy-save", "--energy-baselines=baselines"]
    finished = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    logs = rank_logs(folder / "logs")
    assert finished.returncode == 0, finished.stderr + "\n".join(logs.values())
    return finished.returncode, logs, folder


def test_rank_0_reports_and_rank_1_stays_quiet(torchrun):
    _, logs, folder = torchrun

    assert "results written to results.json" in logs[0]
    assert "baseline saved" in logs[0]
    rank_1_on_energy = [
        line for line in logs[1].splitlines() if "energy" in line and "plugins:" not in line
    ]
    assert rank_1_on_energy == []
    assert (folder / "results.json").exists()


def test_the_training_phase_is_the_sum_of_both_ranks(torchrun):
    _, _, folder = torchrun
    test = json.loads((folder / "results.json").read_text())["tests"][
        "test_ddp_torchrun.py::test_ddp"
    ]

    for meter in ("cputime", "counted"):
        view = test["meters"][meter]
        (train,) = view["phases"]
        per_rank = [entry["joules"] for entry in train["ranks"]]
        assert [entry["rank"] for entry in train["ranks"]] == [0, 1]
        assert all(joules > 0 for joules in per_rank)
        assert view["tec_joules"] == pytest.approx(sum(per_rank))
    counted = test["meters"]["counted"]["phases"][0]
    assert counted["flops"] == sum(entry["flops"] for entry in counted["ranks"])
