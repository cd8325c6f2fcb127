"""Data for the benchmark: deterministic synthetic images (smoke scale) and CIFAR-10 (paper scale).

Both come out as the same in-memory `DataBundle` of normalised float tensors, so every method
trains and evaluates the same way at either scale.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = (*[f"data_batch_{index}" for index in range(1, 6)], "test_batch", "batches.meta")
SYNTHETIC_CLASSES = 10
IMAGE_SIZE_PIXELS = 32
NOISE_STD = 0.8
ORIENTATION_JITTER_DEGREES = 14.0
FREQUENCY_JITTER = 0.15
WINDOW_CENTRE_RANGE = (0.3, 0.7)
"""Where the window's centre may fall, as a fraction of the image side."""
WINDOW_RADIUS_RANGE = (0.18, 0.32)
"""The window's Gaussian radius (σ), as a fraction of the image side."""


class DatasetUnavailable(Exception):
    """The data set asked for is not on disk; the message names what is expected where."""


class DatasetCorrupt(Exception):
    """A data set file is there but unreadable; the message names the file."""


@dataclass(frozen=True)
class Split:
    """Images (N, 3, 32, 32), normalised float32, and their labels (N,) int64, on one device."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, count: int) -> Split:
        return Split(self.images[:count], self.labels[:count])

    def halves(self) -> tuple[Split, Split]:
        """First and second half; architecture search trains weights on one, α on the other."""
        middle = len(self) // 2
        return (
            Split(self.images[:middle], self.labels[:middle]),
            Split(self.images[middle:], self.labels[middle:]),
        )


@dataclass(frozen=True)
class DataBundle:
    """A train split, a held-out test split and the deployment batch inference is measured on."""

    name: str
    train: Split
    test: Split
    batch: Tensor
    num_classes: int
    augment: bool

    @property
    def device(self) -> torch.device:
        return self.train.images.device


def synthetic_images(count: int, seed: int) -> Split:
    """Oriented sine gratings seen through a soft window: the class is the grating's orientation
    (5 values 36° apart, jittered ±14°, so neighbouring classes nearly touch) × frequency band
    (3 or 6 cycles per image, ±15%). The grating shows only inside a Gaussian window of random
    centre and radius, on a random background, with random phase, colour and contrast, under
    Gaussian noise (σ = 0.8, about the grating's amplitude): a network must find the pattern
    wherever it is and read its orientation through the noise, so capacity shows in accuracy
    (ResNet-8 reaches about 88 % in 4 epochs, its half-width twin about 77 %).
    Same seed, same tensors, on any machine."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % SYNTHETIC_CLASSES
    labels = labels[torch.randperm(count, generator=generator)]

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    orientation_count = SYNTHETIC_CLASSES // 2
    orientation_radians = math.pi * (labels % orientation_count).float() / orientation_count
    jitter_radians = math.radians(ORIENTATION_JITTER_DEGREES)
    orientation_radians = orientation_radians + uniform(-jitter_radians, jitter_radians, count)
    cycles_per_image = torch.where(labels < orientation_count, 3.0, 6.0) * uniform(
        1 - FREQUENCY_JITTER, 1 + FREQUENCY_JITTER, count
    )
    phase_radians = uniform(0.0, 2 * math.pi, count)

    coordinates = torch.arange(IMAGE_SIZE_PIXELS, dtype=torch.float32) / IMAGE_SIZE_PIXELS
    rows, columns = torch.meshgrid(coordinates, coordinates, indexing="ij")
    projection = (
        columns[None] * orientation_radians.cos()[:, None, None]
        + rows[None] * orientation_radians.sin()[:, None, None]
    )
    grating = torch.sin(
        2 * math.pi * cycles_per_image[:, None, None] * projection + phase_radians[:, None, None]
    )
    low, high = WINDOW_CENTRE_RANGE
    centre_rows, centre_columns = uniform(low, high, count), uniform(low, high, count)
    radius = uniform(*WINDOW_RADIUS_RANGE, count)
    squared_distance = (rows[None] - centre_rows[:, None, None]) ** 2 + (
        columns[None] - centre_columns[:, None, None]
    ) ** 2
    window = torch.exp(-squared_distance / (2 * radius[:, None, None] ** 2))

    colour = uniform(0.2, 1.0, count, 3, 1, 1)
    contrast = uniform(0.6, 1.0, count, 1, 1, 1)
    background = uniform(-0.3, 0.3, count, 3, 1, 1)
    pixels = IMAGE_SIZE_PIXELS
    noise = NOISE_STD * torch.randn(count, 3, pixels, pixels, generator=generator)
    images = background + contrast * colour * (window * grating)[:, None] + noise
    return Split(images.contiguous(), labels.long())


def synthetic_bundle(
    train_count: int,
    test_count: int,
    deployment_batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> DataBundle:
    """The smoke-scale data set: train and test, each class-balanced, drawn from two independent
    streams spawned from `seed`."""
    train_seed, test_seed = (
        int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2)
    )
    train = synthetic_images(train_count, train_seed)
    test = synthetic_images(test_count, test_seed)
    return DataBundle(
        name="synthetic",
        train=train.to(device),
        test=test.to(device),
        batch=test.images[:deployment_batch_size].to(device),
        num_classes=SYNTHETIC_CLASSES,
        augment=False,
    )


def missing_cifar10_files(root: str | os.PathLike[str] | None) -> list[str]:
    """The CIFAR-10 files absent under `root` (all of them when root is None)."""
    if root is None:
        return [f"{CIFAR10_FOLDER}/{name}" for name in CIFAR10_FILES]
    folder = Path(root) / CIFAR10_FOLDER
    return [f"{CIFAR10_FOLDER}/{name}" for name in CIFAR10_FILES if not (folder / name).is_file()]


def cifar10_unavailable_message(root: str | os.PathLike[str] | None) -> str | None:
    """Why CIFAR-10 cannot be read from `root`, or None when every file is there."""
    missing = missing_cifar10_files(root)
    if not missing:
        return None
    where = "no --energy-data DIR given" if root is None else f"not found in {root}"
    return (
        f"CIFAR-10 {where}: paper scale reads {CIFAR10_FOLDER}/data_batch_1..5, test_batch and "
        f"batches.meta (the python version of CIFAR-10, extracted) and never downloads; "
        f"missing: {', '.join(missing)}"
    )


def _check_cifar10_file(path: Path) -> str | None:
    """Why `path` is not a CIFAR-10 python batch or meta file, or None when it reads as one."""
    try:
        with path.open("rb") as handle:
            content = pickle.load(handle, encoding="latin1")
    except Exception as error:
        return f"does not unpickle ({type(error).__name__}: {error})"
    if not isinstance(content, dict):
        return f"holds a {type(content).__name__}, not a dict"
    if path.name == "batches.meta":
        names = content.get("label_names")
        return None if isinstance(names, list) and names else "has no label_names list"
    data, labels = content.get("data"), content.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        return "has no (N, 3072) 'data' array"
    if data.dtype != np.uint8:
        return f"has 'data' of dtype {data.dtype}, not uint8"
    if not isinstance(labels, list) or len(labels) != len(data):
        return f"has {len(data)} images but no 'labels' list of that length"
    return None


def check_cifar10_files(root: str | os.PathLike[str]) -> None:
    """Raise DatasetCorrupt naming the first CIFAR-10 file under `root` that does not read as
    the python version's format (truncated download, wrong file, other version)."""
    folder = Path(root) / CIFAR10_FOLDER
    for name in CIFAR10_FILES:
        problem = _check_cifar10_file(folder / name)
        if problem is not None:
            raise DatasetCorrupt(
                f"{CIFAR10_FOLDER}/{name} {problem}: extract it again from "
                f"cifar-10-python.tar.gz (the python version of CIFAR-10)"
            )


class _CIFAR10PresentFiles(CIFAR10):
    """torchvision's reader with the MD5 check reduced to a presence check (checksums are
    verified separately, when asked), so files in the real format but other content load too."""

    train_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict[str, str | None]] = {**CIFAR10.meta, "md5": None}


def _corrupt_cifar10_files(root: Path) -> list[str]:
    meta = [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]
    expected = [*CIFAR10.train_list, *CIFAR10.test_list, meta]
    folder = root / CIFAR10_FOLDER
    return [name for name, md5 in expected if not check_integrity(str(folder / name), md5)]


def _to_split(reader: CIFAR10) -> tuple[Tensor, Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(reader.data)).permute(0, 3, 1, 2).float() / 255
    return images, torch.tensor(reader.targets, dtype=torch.long)


def load_cifar10(
    root: str | os.PathLike[str] | None,
    deployment_batch_size: int,
    device: torch.device | str = "cpu",
    verify_checksums: bool = True,
) -> DataBundle:
    """CIFAR-10 from its on-disk python format via torchvision (`download=False`), normalised with
    the per-channel mean and std measured on the training images."""
    message = cifar10_unavailable_message(root)
    if message is not None:
        raise DatasetUnavailable(message)
    assert root is not None
    if verify_checksums and (corrupt := _corrupt_cifar10_files(Path(root))):
        raise DatasetUnavailable(
            f"CIFAR-10 in {root}: MD5 differs from the published files for {', '.join(corrupt)}"
        )
    train_images, train_labels = _to_split(_CIFAR10PresentFiles(str(root), train=True))
    test_reader = _CIFAR10PresentFiles(str(root), train=False)
    test_images, test_labels = _to_split(test_reader)
    mean = train_images.mean(dim=(0, 2, 3), keepdim=True)
    std = train_images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    train = Split((train_images - mean) / std, train_labels).to(device)
    test = Split((test_images - mean) / std, test_labels).to(device)
    return DataBundle(
        name="cifar10",
        train=train,
        test=test,
        batch=test.images[:deployment_batch_size],
        num_classes=len(test_reader.classes),
        augment=True,
    )


def augment_batch(images: Tensor, generator: torch.Generator) -> Tensor:
    """CIFAR's standard augmentation on a batch: 4-pixel zero-padded random crop, random h-flip."""
    count, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    offsets = torch.randint(0, 9, (count, 2), generator=generator)
    rows = offsets[:, 0, None] + torch.arange(height)
    columns = offsets[:, 1, None] + torch.arange(width)
    flip = torch.rand(count, generator=generator) < 0.5
    columns = torch.where(flip[:, None], columns.flip(1), columns)
    batch_index = torch.arange(count)[:, None, None]
    rows, columns = rows.to(images.device), columns.to(images.device)
    cropped = padded.permute(0, 2, 3, 1)[
        batch_index.to(images.device), rows[:, :, None], columns[:, None, :]
    ]
    return cropped.permute(0, 3, 1, 2).contiguous()


def iterate_batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator | None = None,
    augment: bool = False,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(images, labels, sample indices) batches; shuffled and augmented when a generator is given.
    The indices let losses keep per-sample memories (CRD's memory bank)."""
    count = len(split)
    order = torch.arange(count) if generator is None else torch.randperm(count, generator=generator)
    order = order.to(split.images.device)
    for start in range(0, count, batch_size):
        indices = order[start : start + batch_size]
        images = split.images[indices]
        if augment and generator is not None:
            images = augment_batch(images, generator)
        yield images, split.labels[indices], indices
