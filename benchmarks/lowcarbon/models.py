"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", §4.2).

Depth 6n+2 with three stages of widths (w, 2w, 4w). Shortcuts that change shape are 1×1
convolutions (option B) so channel pruning and int8 conversion see plain conv/BN/ReLU modules.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class FeatureOutputs:
    """What distillation losses read: each stage's output map, the pooled embedding, the logits."""

    stages: list[Tensor]
    embedding: Tensor
    logits: Tensor


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, inputs: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(inputs)))))
        return self.relu2(residual + self.shortcut(inputs))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs; `depth=20, width=16` is the paper's ResNet-20."""

    def __init__(self, depth: int, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.width = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages = []
        in_channels = width
        for stage_index in range(3):
            out_channels = width * 2**stage_index
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def name(self) -> str:
        return resnet_name(self.depth, self.width)

    def forward_features(self, inputs: Tensor) -> FeatureOutputs:
        features = self.stem(inputs)
        stage_outputs = []
        for stage in self.stages:
            features = stage(features)
            stage_outputs.append(features)
        embedding = torch.flatten(self.pool(features), 1)
        return FeatureOutputs(stage_outputs, embedding, self.fc(embedding))

    def forward(self, inputs: Tensor) -> Tensor:
        features = self.stem(inputs)
        for stage in self.stages:
            features = stage(features)
        return self.fc(torch.flatten(self.pool(features), 1))


def resnet_name(depth: int, width: int) -> str:
    """`resnet20` at the standard width 16, `resnet20-w8` otherwise."""
    return f"resnet{depth}" if width == 16 else f"resnet{depth}-w{width}"


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters of a float model."""
    return sum(parameter.numel() for parameter in model.parameters())


def serialized_size_bytes(model: nn.Module) -> int:
    """Bytes of the state dict as saved: the on-disk model size, int8 packed weights included."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def count_flops(model: nn.Module, inputs: Tensor) -> int:
    """FLOPs of one forward pass on `inputs`, counted by torch.utils.flop_counter."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(inputs)
    return counter.get_total_flops()


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every batch norm that follows a conv folded into it.

    The deployed form of a float model: int8 conversion and PWLQ fold batch norm too, so the
    uncompressed reference, pruned, distilled and searched models are deployed folded as well;
    otherwise a compression method's IEC gain would partly be the folding (Jacob et al. 2018
    fold BN for inference). Models without batch norm come back unchanged (int8 models)."""
    if not any(isinstance(module, nn.BatchNorm2d) for module in model.modules()):
        return model.eval()
    was_training = model.training
    folded = fuse(model.eval())
    model.train(was_training)
    return folded.eval()
