"""Hugging Face ``Trainer``: ``EnergyCallback`` records energy per epoch (and per step in a test).

In a test, with the training inside a phase::

    with energy.train("fine-tune"):
        trainer = Trainer(model, args, train_dataset=data, callbacks=[EnergyCallback(energy)])
        trainer.train()

the phase's results carry energy per step and per epoch. In a script,
``EnergyCallback(meters="cputime")`` measures each epoch itself: ``callback.epochs`` and
``callback.summary()``. An epoch's energy includes the evaluation the Trainer runs in it.
"""

from __future__ import annotations

from typing import Any

from pytest_energy.integrations.epochs import EpochEnergy, framework_missing

try:
    from transformers import TrainerCallback
except ImportError as _error:
    raise framework_missing(__name__, "Hugging Face transformers", "transformers", _error) from None

__all__ = ["EnergyCallback"]


class EnergyCallback(TrainerCallback):
    """Energy per epoch of ``Trainer.train()``; see the module docstring.

    ``energy``: the test's ``energy`` fixture (steps go to ``energy.progress``); without it,
    ``meters`` (``"auto"`` or names, as ``pytest_energy.measure`` takes) measure each epoch and
    ``epochs`` lists them.
    """

    def __init__(
        self,
        energy: Any | None = None,
        meters: str | list[str] | tuple[str, ...] = "auto",
        cpu_watts_per_thread: float | None = None,
    ) -> None:
        self.recorder = EpochEnergy(energy, meters, cpu_watts_per_thread)
        self._epoch = 0
        self._first_step = 0

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return self.recorder.epochs

    def summary(self) -> str:
        return self.recorder.summary()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recorder.train_begin()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch += 1
        self._first_step = state.global_step
        self.recorder.epoch_begin(self._epoch)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        epochs = int(state.num_train_epochs) if getattr(state, "num_train_epochs", 0) else None
        steps = None
        if epochs and getattr(state, "max_steps", 0):
            steps = -(-int(state.max_steps) // epochs)
        self.recorder.step_end(state.global_step - self._first_step, steps, epochs)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recorder.epoch_end()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recorder.train_end()
