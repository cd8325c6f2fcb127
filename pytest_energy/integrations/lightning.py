"""PyTorch Lightning: ``EnergyCallback`` records energy per epoch (and per step in a test).

In a test, with the fit inside a training phase::

    with energy.train("fit"):
        trainer = lightning.Trainer(max_epochs=3, callbacks=[EnergyCallback(energy)])
        trainer.fit(model, loader)

the phase's results carry energy per step and per epoch. In a script::

    callback = EnergyCallback(meters="cputime")
    lightning.Trainer(max_epochs=3, callbacks=[callback]).fit(model, loader)
    print(callback.summary())          # epoch 1: cputime (estimated) 41.2 J in 10.3 s, ...

Lightning runs validation inside the training epoch, so an epoch's energy includes it.
"""

from __future__ import annotations

from typing import Any

from pytest_energy.integrations.epochs import EpochEnergy, framework_missing

try:
    from lightning.pytorch import Callback
except ImportError as _error:
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise framework_missing(__name__, "PyTorch Lightning", "lightning", _error) from None

__all__ = ["EnergyCallback"]


class EnergyCallback(Callback):
    """Energy per epoch of ``Trainer.fit``; see the module docstring.

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
        super().__init__()
        self.recorder = EpochEnergy(energy, meters, cpu_watts_per_thread)

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return self.recorder.epochs

    def summary(self) -> str:
        return self.recorder.summary()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.train_begin()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.epoch_begin(trainer.current_epoch + 1)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        batches = trainer.num_training_batches
        self.recorder.step_end(
            batch_idx + 1,
            int(batches) if batches not in (None, float("inf")) else None,
            trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None,
        )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.epoch_end()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.train_end()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.recorder.train_end()
