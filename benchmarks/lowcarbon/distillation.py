"""Knowledge distillation of a smaller student from the trained base model as teacher.

Each method is one loss on the teacher's and the student's features (CIFAR ResNets expose stage
maps, pooled embedding and logits, see `FeatureOutputs`), added to the student's cross-entropy
with the weights of Tian et al.'s CRD benchmark (RepDistiller), which covers all of them (CC's
weight is 1 here: the loss below is the paper's kernel form, not RepDistiller's shortcut):

- `kd`      Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".
- `fitnets` Romero et al. 2015, "FitNets: Hints for Thin Deep Nets": two stages, the hint
            stage (`fitnets_hint_stage`, its own TEC phase) then KD of the whole student.
- `at`      Zagoruyko & Komodakis 2017, "Paying More Attention to Attention".
- `sp`      Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation".
- `rkd`     Park et al. 2019, "Relational Knowledge Distillation".
- `pkt`     Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
            Transfer".
- `crd`     Tian et al. 2020, "Contrastive Representation Distillation".
- `nst`     Huang & Wang 2017, "Like What You Like": MMD (polynomial kernel) between the
            distributions of channel activation maps, at every stage.
- `cc`      Peng et al. 2019, "Correlation Congruence": the batch's Gaussian-RBF correlation
            matrix of normalised embeddings (exact kernel, not the paper's Taylor expansion).
- `vid`     Ahn et al. 2019, "Variational Information Distillation": Gaussian likelihood of the
            teacher's stage maps under a regressor of the student's, with learnt per-channel
            variance, at every stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split
from .models import CifarResNet, FeatureOutputs
from .training import TrainingLog, TrainSettings, fit

DISTILLATION_METHODS = ("kd", "fitnets", "at", "sp", "rkd", "pkt", "crd", "nst", "cc", "vid")
FITNETS_HINT_STAGE = 1
"""FitNets' guided layer: the output of the student's middle stage (the paper's middle layer)."""
DISTILLATION_PAPERS = {
    "kd": "Hinton et al. 2015, Distilling the Knowledge in a Neural Network",
    "fitnets": "Romero et al. 2015, FitNets: Hints for Thin Deep Nets",
    "at": "Zagoruyko & Komodakis 2017, Paying More Attention to Attention",
    "sp": "Tung & Mori 2019, Similarity-Preserving Knowledge Distillation",
    "rkd": "Park et al. 2019, Relational Knowledge Distillation",
    "pkt": "Passalis & Tefas 2018, Probabilistic Knowledge Transfer",
    "crd": "Tian et al. 2020, Contrastive Representation Distillation",
    "nst": "Huang & Wang 2017, Like What You Like: Knowledge Distill via Neuron Selectivity "
    "Transfer",
    "cc": "Peng et al. 2019, Correlation Congruence for Knowledge Distillation",
    "vid": "Ahn et al. 2019, Variational Information Distillation for Knowledge Transfer",
}


class KnowledgeDistillationLoss(nn.Module):
    """KL divergence between temperature-softened class distributions, scaled by T²."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        soft_student = F.log_softmax(student.logits / self.temperature, dim=1)
        soft_teacher = F.softmax(teacher.logits / self.temperature, dim=1)
        divergence = F.kl_div(soft_student, soft_teacher, reduction="batchmean")
        return divergence * self.temperature**2


class HintLoss(nn.Module):
    """FitNets: a 1×1 conv regressor maps the student's middle stage onto the teacher's (the
    hint); the loss is their mean squared difference."""

    def __init__(self, student_channels: int, teacher_channels: int, stage: int = 1) -> None:
        super().__init__()
        self.stage = stage
        self.regressor = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
            nn.BatchNorm2d(teacher_channels),
        )

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        guided = self.regressor(student.stages[self.stage])
        return F.mse_loss(guided, teacher.stages[self.stage])


def _attention_map(features: Tensor) -> Tensor:
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


class AttentionTransferLoss(nn.Module):
    """Matches the normalised spatial attention maps (channel mean of squared activations) at
    the output of every stage."""

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        return sum(
            (_attention_map(s) - _attention_map(t)).pow(2).mean()
            for s, t in zip(student.stages, teacher.stages, strict=True)
        )


class SimilarityPreservingLoss(nn.Module):
    """Matches the batch's row-normalised Gram matrices of last-stage activations: inputs that
    look alike to the teacher should look alike to the student."""

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        def similarity(features: Tensor) -> Tensor:
            flat = features.flatten(1)
            return F.normalize(flat @ flat.T, dim=1)

        batch = student.logits.shape[0]
        difference = similarity(student.stages[-1]) - similarity(teacher.stages[-1])
        return difference.pow(2).sum() / batch**2


class RelationalLoss(nn.Module):
    """RKD: distance-wise (pairwise distances over their mean) and angle-wise (cosines of
    triplet angles) relations of the embeddings, Huber-matched, weighted 25 and 50 as in the
    paper."""

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    @staticmethod
    def _distances(embedding: Tensor) -> Tensor:
        distances = torch.cdist(embedding, embedding)
        return distances / distances[distances > 0].mean().clamp_min(1e-12)

    @staticmethod
    def _angles(embedding: Tensor) -> Tensor:
        directions = F.normalize(embedding[None] - embedding[:, None], dim=2)
        return torch.bmm(directions, directions.transpose(1, 2)).flatten()

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_distances = self._distances(teacher.embedding)
            teacher_angles = self._angles(teacher.embedding)
        distance_loss = F.smooth_l1_loss(self._distances(student.embedding), teacher_distances)
        angle_loss = F.smooth_l1_loss(self._angles(student.embedding), teacher_angles)
        return self.distance_weight * distance_loss + self.angle_weight * angle_loss


class ProbabilisticTransferLoss(nn.Module):
    """PKT: KL divergence between the teacher's and the student's conditional probability
    distributions over the batch, built from cosine-similarity kernels of the embeddings."""

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        def conditional_probabilities(embedding: Tensor) -> Tensor:
            unit = F.normalize(embedding, dim=1)
            kernel = (unit @ unit.T + 1) / 2
            return kernel / kernel.sum(dim=1, keepdim=True)

        student_probabilities = conditional_probabilities(student.embedding)
        teacher_probabilities = conditional_probabilities(teacher.embedding)
        log_ratio = torch.log((teacher_probabilities + 1e-7) / (student_probabilities + 1e-7))
        return (teacher_probabilities * log_ratio).mean()


class ContrastiveRepresentationLoss(nn.Module):
    """CRD: student and teacher embeddings projected to a shared unit sphere; each sample's
    student embedding must pick its own teacher embedding against `negatives` teacher embeddings
    held in a memory bank (and vice versa), scored by NCE with the paper's temperature 0.07 and
    memory momentum 0.5. Negatives are drawn per sample from the other classes only, never the
    anchor's class or the anchor itself (RepDistiller's `cls_negative` sampling), so a class's
    own samples are not pushed apart. One shortcut: the positive is the current, frozen
    teacher's embedding rather than its memory entry, so short schedules get a clean signal
    from step one."""

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        labels: Tensor,
        negatives: int,
        embedding_dim: int = 128,
        temperature: float = 0.07,
        momentum: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        labels = labels.detach().cpu().long()
        dataset_size = len(labels)
        self.student_head = nn.Linear(student_dim, embedding_dim)
        self.teacher_head = nn.Linear(teacher_dim, embedding_dim)
        self._other_classes = [
            torch.nonzero(labels != label).flatten() for label in range(int(labels.max()) + 1)
        ]
        smallest_pool = min(len(pool) for pool in self._other_classes)
        if smallest_pool == 0:
            raise ValueError("CRD needs samples of at least two classes to draw negatives from")
        self.negatives = negatives
        self.temperature = temperature
        self.momentum = momentum
        self.dataset_size = dataset_size
        self.register_buffer("labels", labels)
        generator = torch.Generator().manual_seed(seed)
        self._generator = generator
        for name in ("student_memory", "teacher_memory"):
            memory = torch.randn(dataset_size, embedding_dim, generator=generator)
            self.register_buffer(name, F.normalize(memory, dim=1))
        self._normalisers: list[float | None] = [None, None]

    def draw_negatives(self, indices: Tensor) -> Tensor:
        """(batch, negatives) sample indices, each row drawn uniformly (with replacement, as
        RepDistiller does when a class pool is smaller than K) from samples of other classes."""
        anchor_labels = self.labels[indices.cpu()]
        rows = []
        for label in anchor_labels.tolist():
            pool = self._other_classes[label]
            picks = torch.randint(0, len(pool), (self.negatives,), generator=self._generator)
            rows.append(pool[picks])
        return torch.stack(rows)

    def _nce(
        self, anchor: Tensor, positive: Tensor, memory: Tensor, indices: Tensor, slot: int
    ) -> Tensor:
        negative_indices = self.draw_negatives(indices).to(anchor.device)
        positive_scores = (anchor * positive).sum(dim=1, keepdim=True)
        negative_scores = torch.bmm(memory[negative_indices], anchor[:, :, None]).squeeze(2)
        scores = torch.exp(torch.cat([positive_scores, negative_scores], dim=1) / self.temperature)
        if self._normalisers[slot] is None:
            self._normalisers[slot] = scores.mean().item() * self.dataset_size
        probabilities = scores / self._normalisers[slot]
        noise = self.negatives / self.dataset_size
        positive_term = torch.log(probabilities[:, 0] / (probabilities[:, 0] + noise + 1e-7))
        negative_term = torch.log(noise / (probabilities[:, 1:] + noise + 1e-7)).sum(dim=1)
        return -(positive_term + negative_term).mean()

    @torch.no_grad()
    def _remember(self, memory: Tensor, indices: Tensor, embedding: Tensor) -> None:
        blended = self.momentum * memory[indices] + (1 - self.momentum) * embedding.detach()
        memory[indices] = F.normalize(blended, dim=1)

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, indices: Tensor) -> Tensor:
        student_embedding = F.normalize(self.student_head(student.embedding), dim=1)
        teacher_embedding = F.normalize(self.teacher_head(teacher.embedding), dim=1)
        student_anchor = self._nce(
            student_embedding, teacher_embedding.detach(), self.teacher_memory, indices, 0
        )
        teacher_anchor = self._nce(
            teacher_embedding, student_embedding.detach(), self.student_memory, indices, 1
        )
        self._remember(self.student_memory, indices, student_embedding)
        self._remember(self.teacher_memory, indices, teacher_embedding)
        return student_anchor + teacher_anchor


class NeuronSelectivityLoss(nn.Module):
    """NST: squared MMD with the polynomial kernel k(x, y) = (x·y)² between the sets of
    channel activation maps (each map L2-normalised over its pixels), summed over stages."""

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        def mmd(s: Tensor, t: Tensor) -> Tensor:
            s = F.normalize(s.flatten(2), dim=2)
            t = F.normalize(t.flatten(2), dim=2)

            def kernel(a: Tensor, b: Tensor) -> Tensor:
                return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

            return kernel(t, t) + kernel(s, s) - 2 * kernel(s, t)

        return sum(mmd(s, t) for s, t in zip(student.stages, teacher.stages, strict=True))


class CorrelationCongruenceLoss(nn.Module):
    """CC: mean squared difference between the batch's sample-to-sample correlation matrices
    of student and teacher, each a Gaussian RBF kernel exp(−γ‖x_i − x_j‖²) of L2-normalised
    embeddings (the matrices are batch × batch, so the embedding widths may differ)."""

    def __init__(self, gamma: float = 0.4) -> None:
        super().__init__()
        self.gamma = gamma

    def _correlation(self, embedding: Tensor) -> Tensor:
        unit = F.normalize(embedding, dim=1)
        return torch.exp(-self.gamma * torch.cdist(unit, unit).pow(2))

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_correlation = self._correlation(teacher.embedding)
        return (self._correlation(student.embedding) - teacher_correlation).pow(2).mean()


class VariationalInformationLoss(nn.Module):
    """VID: −log q(t | s) for each stage, q Gaussian with mean a 1×1-conv regressor of the
    student's map and a learnt per-channel variance (softplus, initialised to 5 as in
    RepDistiller), i.e. ½ mean[(t − μ(s))² / σ² + log σ²] (constants dropped), summed."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        super().__init__()
        self.regressors = nn.ModuleList()
        self.raw_variances = nn.ParameterList()
        initial = math.log(math.exp(5.0 - 1e-6) - 1.0)
        for c_s, c_t in zip(student_channels, teacher_channels, strict=True):
            self.regressors.append(
                nn.Sequential(
                    nn.Conv2d(c_s, c_t, 1),
                    nn.ReLU(),
                    nn.Conv2d(c_t, c_t, 1),
                    nn.ReLU(),
                    nn.Conv2d(c_t, c_t, 1),
                )
            )
            self.raw_variances.append(nn.Parameter(torch.full((c_t,), initial)))

    def forward(self, student: FeatureOutputs, teacher: FeatureOutputs, _indices: Tensor) -> Tensor:
        total = torch.zeros((), device=student.logits.device)
        for regressor, raw, s, t in zip(
            self.regressors, self.raw_variances, student.stages, teacher.stages, strict=True
        ):
            variance = (F.softplus(raw) + 1e-6)[None, :, None, None]
            mean = regressor(s)
            total = total + 0.5 * ((t - mean).pow(2) / variance + variance.log()).mean()
        return total


@dataclass(frozen=True)
class LossWeights:
    """Total loss = cross_entropy × CE + distillation × method loss (RepDistiller's γ, α/β)."""

    cross_entropy: float
    distillation: float


LOSS_WEIGHTS = {
    "kd": LossWeights(cross_entropy=0.1, distillation=0.9),
    "fitnets": LossWeights(cross_entropy=0.1, distillation=0.9),
    "at": LossWeights(cross_entropy=1.0, distillation=1000.0),
    "sp": LossWeights(cross_entropy=1.0, distillation=3000.0),
    "rkd": LossWeights(cross_entropy=1.0, distillation=1.0),
    "pkt": LossWeights(cross_entropy=1.0, distillation=30000.0),
    "crd": LossWeights(cross_entropy=1.0, distillation=0.8),
    "nst": LossWeights(cross_entropy=1.0, distillation=50.0),
    "cc": LossWeights(cross_entropy=1.0, distillation=1.0),
    "vid": LossWeights(cross_entropy=1.0, distillation=1.0),
}


def _stage_channels(model: CifarResNet) -> list[int]:
    return [stage[-1].conv2.out_channels for stage in model.stages]


def distillation_loss(
    method: str,
    student: CifarResNet,
    teacher: CifarResNet,
    labels: Tensor,
    crd_negatives: int = 4096,
    seed: int = 0,
) -> nn.Module:
    """The loss module of `method` (one of DISTILLATION_METHODS) for this student/teacher pair;
    `labels` are the training set's (CRD draws its negatives from the other classes). FitNets'
    second stage is KD: its hint is learnt before, by `fitnets_hint_stage`."""
    if method in ("kd", "fitnets"):
        return KnowledgeDistillationLoss()
    if method == "at":
        return AttentionTransferLoss()
    if method == "sp":
        return SimilarityPreservingLoss()
    if method == "rkd":
        return RelationalLoss()
    if method == "pkt":
        return ProbabilisticTransferLoss()
    if method == "crd":
        return ContrastiveRepresentationLoss(
            student.fc.in_features, teacher.fc.in_features, labels, crd_negatives, seed=seed
        )
    if method == "nst":
        return NeuronSelectivityLoss()
    if method == "cc":
        return CorrelationCongruenceLoss()
    if method == "vid":
        return VariationalInformationLoss(_stage_channels(student), _stage_channels(teacher))
    raise ValueError(f"unknown distillation method {method!r}; known: {DISTILLATION_METHODS}")


@dataclass
class DistillationLog(TrainingLog):
    """Per step: the total loss (in `step_losses`) and the method's own distillation term."""

    distillation_losses: list[float] = field(default_factory=list)


def distill(
    student: CifarResNet,
    teacher: CifarResNet,
    method: str,
    train: Split,
    epochs: float,
    settings: TrainSettings,
    seed: int,
    augment: bool = False,
    crd_negatives: int = 4096,
) -> DistillationLog:
    """Train `student` (in place) on `train` with cross-entropy plus `method`'s distillation
    loss against the frozen `teacher`; leaves the student in eval mode. For `fitnets` run
    `fitnets_hint_stage` first: this is its second stage (KD from the hint-initialised student)."""
    device = train.images.device
    criterion = distillation_loss(method, student, teacher, train.labels, crd_negatives, seed)
    criterion.to(device)
    weights = LOSS_WEIGHTS[method]
    teacher.eval()
    distillation_terms: list[float] = []

    def batch_loss(images: Tensor, labels: Tensor, indices: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_features = teacher.forward_features(images)
        student_features = student.forward_features(images)
        term = criterion(student_features, teacher_features, indices)
        distillation_terms.append(term.item())
        classification = F.cross_entropy(student_features.logits, labels)
        return weights.cross_entropy * classification + weights.distillation * term

    log = fit([student, criterion], train, epochs, batch_loss, settings, seed, augment)
    return DistillationLog(step_losses=log.step_losses, distillation_losses=distillation_terms)


def _hinted_layers(student: CifarResNet, stage: int) -> nn.Sequential:
    """The student up to and including its guided layer (the output of stage `stage`)."""
    return nn.Sequential(student.stem, *student.stages[: stage + 1])


def fitnets_hint_stage(
    student: CifarResNet,
    teacher: CifarResNet,
    train: Split,
    epochs: float,
    settings: TrainSettings,
    seed: int,
    augment: bool = False,
    stage: int = FITNETS_HINT_STAGE,
) -> TrainingLog:
    """FitNets' first stage (Romero et al. 2015, §2.2): only the student's layers up to its
    guided layer (stage `stage`'s output) and a regressor are trained, on the hint loss alone
    (MSE between the regressed guided layer and the teacher's hint layer). The later layers
    and the classifier keep their initial weights; `distill(..., "fitnets")` then trains all."""
    device = train.images.device
    hint = HintLoss(
        _stage_channels(student)[stage], _stage_channels(teacher)[stage], stage=stage
    ).to(device)
    hinted = _hinted_layers(student, stage)
    teacher.eval()

    def hint_loss(images: Tensor, _labels: Tensor, _indices: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_hint = _hinted_layers(teacher, stage)(images)
        return F.mse_loss(hint.regressor(hinted(images)), teacher_hint)

    log = fit([hinted, hint], train, epochs, hint_loss, settings, seed, augment)
    student.eval()
    return log
