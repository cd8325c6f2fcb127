"""Does the first test of a session pay for the process's start-up? (issue 11, point 2)

Two identical lifecycle tests (a small CNN, a few training steps inside ``energy.train``) run
in fresh pytest sessions, in both orders, with and without a warm-up fixture that runs one
unmeasured step first. Prints each test's cputime TEC (estimated) per order and the ratio of
the first test's TEC to the second's: near 1 when the order does not matter.

pytest-energy pays its own one-time costs (meter set-up, the counted meter's dispatch mode,
first counter reads) in a throw-away window before the first test. What remains is the user's
own first-call cost: torch's lazy initialisation of the model's operators, which a warm-up
fixture (or an unmeasured first step) moves out of every measured window.

    PYTHONPATH=$PWD python benchmarks/first_test.py [--sessions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = """
import pytest
import torch

torch.set_num_threads(1)


def step(model, optimizer):
    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )


def train(energy):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with energy.train("train"):
        for _ in range(3):
            step(model, optimizer)
    energy.inference(lambda: model(torch.randn(1, 3, 32, 32)), samples=1)


def test_a(energy):
    train(energy)


def test_b(energy):
    train(energy)
"""

WARM_UP = '''
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def warm_up():
    """One unmeasured training step: torch's lazy initialisation is paid here, not in a test."""
    from test_pair import make_model, step

    model = make_model()
    step(model, torch.optim.SGD(model.parameters(), lr=0.01))
'''


def run_session(project: Path, order: list[str]) -> dict[str, float]:
    """One fresh pytest session; cputime TEC in joules per test name."""
    results = project / "results.json"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--energy",
        "--energy-meter", "cputime", "--energy-cpu-watts", "4", "--energy-rounds", "1",
        f"--energy-json={results}", *[f"test_pair.py::{name}" for name in order],
    ]  # fmt: skip
    subprocess.run(command, cwd=project, check=True, capture_output=True)
    tests = json.loads(results.read_text())["tests"]
    return {
        nodeid.split("::")[1]: record["meters"]["cputime"]["tec_joules"]
        for nodeid, record in tests.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3, help="fresh sessions per cell")
    args = parser.parse_args()
    print(f"cputime TEC (estimated, 4 W per thread), median of {args.sessions} sessions each")
    print(f"{'warm-up':<10}{'order':<8}{'first test':>14}{'second test':>14}{'first/second':>14}")
    for warm_up in (False, True):
        with tempfile.TemporaryDirectory(prefix="first-test-") as folder:
            project = Path(folder)
            (project / "test_pair.py").write_text(TESTS)
            (project / "conftest.py").write_text(WARM_UP if warm_up else "")
            for order in (["test_a", "test_b"], ["test_b", "test_a"]):
                firsts, seconds = [], []
                for _ in range(args.sessions):
                    tec = run_session(project, order)
                    firsts.append(tec[order[0]])
                    seconds.append(tec[order[1]])
                first, second = statistics.median(firsts), statistics.median(seconds)
                print(
                    f"{'yes' if warm_up else 'no':<10}{order[0][-1]},{order[1][-1]:<6}"
                    f"{first * 1e3:>11.1f} mJ{second * 1e3:>11.1f} mJ{first / second:>14.2f}"
                )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
