"""The benchmark's data, models and training loop: deterministic, learnable, real formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.lowcarbon.data import (
    CIFAR10_FILES,
    DatasetUnavailable,
    Split,
    augment_batch,
    cifar10_unavailable_message,
    iterate_batches,
    load_cifar10,
    synthetic_bundle,
    synthetic_images,
)
from benchmarks.lowcarbon.models import CifarResNet, count_flops, count_parameters
from benchmarks.lowcarbon.scales import SMOKE
from benchmarks.lowcarbon.training import (
    TrainSettings,
    evaluate,
    seed_everything,
    train_classifier,
    wilson_interval,
)

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer"]


def write_cifar10(root: Path, images_per_batch: int, seed: int) -> None:
    """A small data set in CIFAR-10's on-disk python format: pickled dicts of uint8 rows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    generator = np.random.default_rng(seed)
    for name in CIFAR10_FILES[:-1]:
        batch = {
            "batch_label": name,
            "data": generator.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8),
            "labels": generator.integers(0, len(LABEL_NAMES), images_per_batch).tolist(),
            "filenames": [f"{name}_{index}.png" for index in range(images_per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": LABEL_NAMES, "num_cases_per_batch": images_per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def test_synthetic_data_is_the_same_for_a_seed_and_differs_across_seeds():
    first, again, other = synthetic_images(64, 3), synthetic_images(64, 3), synthetic_images(64, 4)

    assert torch.equal(first.images, again.images)
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (64, 3, 32, 32)
    assert first.images.dtype == torch.float32


def test_synthetic_classes_are_balanced_and_train_test_do_not_overlap():
    bundle = synthetic_bundle(train_count=200, test_count=100, deployment_batch_size=16, seed=0)

    assert torch.bincount(bundle.train.labels, minlength=10).tolist() == [20] * 10
    assert len(bundle.test) == 100
    assert torch.equal(bundle.batch, bundle.test.images[:16])
    train_rows = {row.numpy().tobytes() for row in bundle.train.images}
    assert not any(row.numpy().tobytes() in train_rows for row in bundle.test.images)


def test_synthetic_data_is_learnable_well_above_chance():
    seed_everything(0)
    bundle = synthetic_bundle(train_count=2000, test_count=500, deployment_batch_size=16, seed=0)
    model = CifarResNet(depth=8, width=8)
    untrained_accuracy = evaluate(model, bundle.test)

    train_classifier(model, bundle.train, 3, TrainSettings(batch_size=32, learning_rate=0.1), 0)

    accuracy = evaluate(model, bundle.test)
    assert accuracy > 0.5, f"10 classes, chance is 0.1; trained {accuracy}"
    assert accuracy > untrained_accuracy + 0.3


def test_the_smoke_test_set_tells_one_percentage_point_from_noise():
    """At 50 % accuracy (the widest interval) the 95 % Wilson interval of the smoke scale's
    test set is under ±1 pp, so a 1 pp difference between methods is not lost in sampling."""
    samples = SMOKE.synthetic_test_count
    low, high = wilson_interval(samples // 2, samples)

    assert (high - low) / 2 < 0.01
    bundle = synthetic_bundle(64, samples, 16, seed=0)
    assert len(bundle.test) == samples


def test_cifar10_loader_reads_the_on_disk_format(tmp_path):
    write_cifar10(tmp_path, images_per_batch=12, seed=0)

    bundle = load_cifar10(tmp_path, deployment_batch_size=8, verify_checksums=False)

    assert bundle.name == "cifar10"
    assert bundle.train.images.shape == (60, 3, 32, 32)
    assert bundle.test.images.shape == (12, 3, 32, 32)
    assert bundle.num_classes == len(LABEL_NAMES)
    assert bundle.batch.shape == (8, 3, 32, 32)
    test_batch = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert bundle.test.labels.tolist() == test_batch["labels"]
    channel_means = bundle.train.images.mean(dim=(0, 2, 3))
    assert torch.allclose(channel_means, torch.zeros(3), atol=1e-4)
    first_pixel = test_batch["data"][0, [0, 1024, 2048]]
    raw_train = (
        np.concatenate(
            [
                pickle.loads(
                    (tmp_path / "cifar-10-batches-py" / f"data_batch_{index}").read_bytes()
                )["data"]
                for index in range(1, 6)
            ]
        ).reshape(-1, 3, 1024)
        / 255.0
    )
    expected = (first_pixel / 255.0 - raw_train.mean(axis=(0, 2))) / raw_train.std(
        axis=(0, 2), ddof=1
    )
    assert np.allclose(bundle.test.images[0, :, 0, 0].numpy(), expected, atol=1e-4)


def test_cifar10_files_other_than_the_published_ones_fail_the_checksum_by_name(tmp_path):
    write_cifar10(tmp_path, images_per_batch=2, seed=0)

    with pytest.raises(DatasetUnavailable, match=r"MD5 differs.*data_batch_1"):
        load_cifar10(tmp_path, deployment_batch_size=2)


@pytest.mark.parametrize("present", [0, 3])
def test_missing_cifar10_names_every_expected_file(tmp_path, present):
    if present:
        write_cifar10(tmp_path, images_per_batch=2, seed=0)
        for name in CIFAR10_FILES[present:]:
            (tmp_path / "cifar-10-batches-py" / name).unlink()

    message = cifar10_unavailable_message(tmp_path)

    assert message is not None
    assert str(tmp_path) in message
    assert "data_batch_1..5, test_batch and batches.meta" in message
    for name in CIFAR10_FILES[present:]:
        assert f"cifar-10-batches-py/{name}" in message
    with pytest.raises(DatasetUnavailable, match="never downloads"):
        load_cifar10(tmp_path, deployment_batch_size=2)


def test_no_data_dir_says_how_to_give_one():
    assert "no --energy-data DIR given" in cifar10_unavailable_message(None)


def test_augmentation_crops_and_flips_within_the_image():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)

    augmented = augment_batch(images, torch.Generator().manual_seed(0))

    assert augmented.shape == images.shape
    assert torch.equal(augmented, augment_batch(images, torch.Generator().manual_seed(0)))
    kept = augmented[augmented != 0]
    assert torch.isin(kept, images).all()


def test_batches_cover_every_sample_once_per_epoch():
    split = Split(torch.randn(10, 3, 32, 32), torch.arange(10))

    seen = torch.cat(
        [indices for _, _, indices in iterate_batches(split, 4, torch.Generator().manual_seed(1))]
    )

    assert sorted(seen.tolist()) == list(range(10))


def test_resnet_depths_widths_and_feature_outputs():
    inputs = torch.randn(2, 3, 32, 32)
    resnet20, resnet8 = CifarResNet(20, 16), CifarResNet(8, 8)

    features = resnet20.eval().forward_features(inputs)

    assert [stage.shape[1:] for stage in features.stages] == [
        (16, 32, 32),
        (32, 16, 16),
        (64, 8, 8),
    ]
    assert features.embedding.shape == (2, 64)
    assert torch.allclose(features.logits, resnet20(inputs))
    assert resnet20.name == "resnet20" and resnet8.name == "resnet8-w8"
    assert count_parameters(resnet8) < count_parameters(resnet20)
    assert 0 < count_flops(resnet8, inputs) < count_flops(resnet20, inputs)
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(10)


def test_float_models_are_deployed_batch_norm_folded_like_their_int8_and_pwlq_twins():
    """The uncompressed reference is measured as deployed: BN folded into its convs, as int8
    conversion and PWLQ fold it, so its counted IEC equals its folded twin's (PWLQ keeps fp32
    kernels and the same graph) and folding alone is nobody's gain."""
    from benchmarks.lowcarbon.models import fold_batch_norm
    from benchmarks.lowcarbon.quantization import simulate_pwlq
    from benchmarks.lowcarbon.training import inference_call
    from pytest_energy.meters.counted import count

    torch.manual_seed(0)
    reference = CifarResNet(depth=8, width=8).eval()
    batch = torch.randn(4, 3, 32, 32)

    deployed = count(inference_call(reference, batch)).joules
    folded_twin = count(inference_call(simulate_pwlq(reference), batch)).joules
    unfolded = count(lambda: reference(batch)).joules

    assert deployed == folded_twin < unfolded
    folded = fold_batch_norm(reference)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(batch), reference(batch), atol=1e-5, rtol=1e-4)
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in reference.modules())
