"""Three unrelated tasks in one run: each reads as a small paper of its own.

- digits: a small CNN (the reference), the same CNN with half its filters pruned by L1 norm,
  and a tiny vision transformer, on synthetic 16×16 "digit" images;
- text: a word-level LSTM language model (the reference), the same LSTM quantized to int8
  (dynamic), and a small Transformer language model, on a synthetic token stream;
- tabular: an MLP (the reference) and a student MLP distilled from it.

Run it with::

    pytest examples/multitask --energy --energy-meter cputime,counted \
        --energy-markdown report.md --energy-plot report.png

No data set is downloaded: every batch is generated from a fixed seed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

STEPS = 30
BATCH = 64


def set_seed() -> None:
    torch.manual_seed(0)


# --- data ------------------------------------------------------------------------------------


def digit_batch(size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the quadrant and stripe orientation of a bright bar, plus noise."""
    labels = torch.randint(0, 10, (size,))
    images = torch.randn(size, 1, 16, 16) * 0.3
    for index, label in enumerate(labels.tolist()):
        row, column = divmod(label, 4)
        images[index, 0, 4 * row : 4 * row + 3, 4 * column : 4 * column + 3] += 2.0
    return images, labels


VOCAB = 50


def token_batch(size: int = 16, length: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences where each token is the previous plus a fixed step (mod VOCAB), with noise."""
    start = torch.randint(0, VOCAB, (size, 1))
    steps = torch.arange(length + 1).unsqueeze(0) * 3
    tokens = (start + steps) % VOCAB
    noise = torch.rand(tokens.shape) < 0.05
    tokens = torch.where(noise, torch.randint(0, VOCAB, tokens.shape), tokens)
    return tokens[:, :-1], tokens[:, 1:]


def tabular_batch(size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.randn(size, 20)
    labels = (features[:, :5].sum(1) > 0).long() + 2 * (features[:, 5:10].sum(1) > 0).long()
    return features, labels


# --- models ----------------------------------------------------------------------------------


class SmallCnn(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.head = nn.Linear(width * 16, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


class TinyVit(nn.Module):
    def __init__(self, dim: int = 32, patch: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, (16 // patch) ** 2, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.embed(images).flatten(2).transpose(1, 2) + self.position
        return self.head(self.encoder(patches).mean(1))


class LstmLanguageModel(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(self.embed(tokens))[0])


class TransformerLanguageModel(nn.Module):
    def __init__(self, dim: int = 64, length: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.position = nn.Parameter(torch.zeros(1, length, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(dim, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens) + self.position[:, : tokens.shape[1]]
        return self.out(self.encoder(hidden, mask=self.mask, is_causal=True))


def mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 4))


# --- training and evaluation -----------------------------------------------------------------


def train(model: nn.Module, batches, steps: int = STEPS, energy=None, loss_of=None) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_of = loss_of or (
        lambda out, y: nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    )
    for step in range(steps):
        inputs, targets = batches()
        outputs = model(inputs)
        loss = loss_of(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if energy is not None:
            energy.progress(batch=step + 1, batches=steps, loss=float(loss))
    return model


@torch.no_grad()
def accuracy(model: nn.Module, batches) -> float:
    set_seed()
    correct = total = 0
    for _ in range(5):
        inputs, targets = batches()
        predicted = model(inputs).argmax(-1)
        correct += int((predicted == targets).sum())
        total += targets.numel()
    return correct / total


def measure_inference(energy, model: nn.Module, batches) -> None:
    inputs, _ = batches()
    model.eval()

    @torch.no_grad()
    def infer():
        return model(inputs)

    energy.inference(infer, samples=inputs.shape[0])


# --- shared base models, trained once per run and charged to every method built on them -------


@pytest.fixture(scope="session")
def base_cnn(energy_session):
    set_seed()
    with energy_session.measure("train-cnn") as training:
        model = train(SmallCnn(), digit_batch)
    return model, training


@pytest.fixture(scope="session")
def base_lstm(energy_session):
    set_seed()
    with energy_session.measure("train-lstm") as training:
        model = train(LstmLanguageModel(), token_batch)
    return model, training


@pytest.fixture(scope="session")
def base_mlp(energy_session):
    set_seed()
    with energy_session.measure("train-mlp") as training:
        model = train(mlp(128), tabular_batch, steps=60)
    return model, training


# --- task 1: digits --------------------------------------------------------------------------

DIGITS = {"dataset": "synthetic-digits"}


@pytest.mark.lifecycle(family="baseline", method="uncompressed", model="cnn", **DIGITS)
def test_cnn(energy, base_cnn):
    model, training = base_cnn
    energy.charge(training)
    energy.accuracy = accuracy(model, digit_batch)
    measure_inference(energy, model, digit_batch)


@pytest.mark.lifecycle(family="pruning", method="l1-filters-50%", model="cnn", **DIGITS)
def test_cnn_pruned(energy, base_cnn):
    model, training = base_cnn
    energy.charge(training)
    with energy.train("prune"):
        pruned = SmallCnn(width=8)
        keep = model.features[0].weight.abs().sum((1, 2, 3)).argsort(descending=True)[:8]
        with torch.no_grad():
            pruned.features[0].weight.copy_(model.features[0].weight[keep])
            pruned.features[0].bias.copy_(model.features[0].bias[keep])
    with energy.train("finetune"):
        train(pruned, digit_batch, steps=STEPS // 2, energy=energy)
    energy.accuracy = accuracy(pruned, digit_batch)
    measure_inference(energy, pruned, digit_batch)


@pytest.mark.lifecycle(family="architecture", method="tiny-vit", model="vit", **DIGITS)
def test_vit(energy):
    set_seed()
    with energy.train("train"):
        model = train(TinyVit(), digit_batch, steps=3 * STEPS, energy=energy)
    energy.accuracy = accuracy(model, digit_batch)
    measure_inference(energy, model, digit_batch)


# --- task 2: text ----------------------------------------------------------------------------

TEXT = {"dataset": "synthetic-text"}


@pytest.mark.lifecycle(family="baseline", method="uncompressed", model="lstm", **TEXT)
def test_lstm(energy, base_lstm):
    model, training = base_lstm
    energy.charge(training)
    energy.accuracy = accuracy(model, token_batch)
    measure_inference(energy, model, token_batch)


@pytest.mark.lifecycle(family="quantization", method="dynamic-int8", model="lstm", **TEXT)
def test_lstm_int8(energy, base_lstm):
    model, training = base_lstm
    energy.charge(training)
    with energy.train("quantize"):
        quantized = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.LSTM, nn.Linear}, dtype=torch.qint8
        )
    energy.accuracy = accuracy(quantized, token_batch)
    measure_inference(energy, quantized, token_batch)


@pytest.mark.lifecycle(family="architecture", method="transformer", model="transformer", **TEXT)
def test_transformer_lm(energy):
    set_seed()
    with energy.train("train"):
        model = train(TransformerLanguageModel(), token_batch, energy=energy)
    energy.accuracy = accuracy(model, token_batch)
    measure_inference(energy, model, token_batch)


# --- task 3: tabular -------------------------------------------------------------------------

TABULAR = {"dataset": "synthetic-tabular"}


@pytest.mark.lifecycle(family="baseline", method="uncompressed", model="mlp-128", **TABULAR)
def test_mlp(energy, base_mlp):
    model, training = base_mlp
    energy.charge(training)
    energy.accuracy = accuracy(model, tabular_batch)
    measure_inference(energy, model, tabular_batch)


@pytest.mark.lifecycle(family="distillation", method="kd-mlp-16", model="mlp-16", **TABULAR)
def test_mlp_distilled(energy, base_mlp):
    teacher, training = base_mlp
    energy.charge(training)
    set_seed()
    student = mlp(16)

    def distil_batch():
        features, _ = tabular_batch()
        with torch.no_grad():
            return features, teacher(features).softmax(-1)

    with energy.train("distil"):
        train(
            student,
            distil_batch,
            steps=60,
            energy=energy,
            loss_of=lambda out, soft: nn.functional.cross_entropy(out, soft),
        )
    energy.accuracy = accuracy(student, tabular_batch)
    measure_inference(energy, student, tabular_batch)
