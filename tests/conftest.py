"""Shared setup for the plugin's own tests."""

import torch

from pytest_energy.meters.counted import count

# pytester's in-process runs restore sys.modules afterwards, and torch (with the modules it
# loads lazily on first use, e.g. for the counted meter's dispatch mode) cannot be imported a
# second time in one process. Loading all of it here, before any run, keeps it loaded.
count(lambda: torch.nn.Linear(2, 2)(torch.ones(1, 2)).sum().backward())
