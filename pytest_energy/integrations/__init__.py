"""Callbacks for training frameworks, recording energy per epoch (and per step with the fixture).

- ``pytest_energy.integrations.lightning.EnergyCallback``: PyTorch Lightning;
- ``pytest_energy.integrations.huggingface.EnergyCallback``: Hugging Face ``Trainer``.

Each module imports its framework and, where the framework is not installed, fails to import
with one line naming the package to install. Both share ``EpochEnergy``: given the test's
``energy`` fixture they mark each training step with ``energy.progress(...)`` (so the phase
the fit runs in gets energy per step and per epoch); without it they measure each epoch in a
window of their own, with the meters ``pytest_energy.measure`` would use.
"""

from pytest_energy.integrations.epochs import EpochEnergy, framework_missing

__all__ = ["EpochEnergy", "framework_missing"]
