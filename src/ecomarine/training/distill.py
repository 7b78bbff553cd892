"""Knowledge distillation: a trained identifier (often an ensemble) teaches a new one.

An ensemble of separately trained identifiers ranks individuals better than any member
but costs one network pass per member. Distillation trains a single network to imitate
it: besides the usual ArcFace loss on the labels, the student matches

* the teacher's distribution over the training individuals (its ArcFace cosines,
  softened by a temperature), and/or
* the teacher's cosine similarities between the photos of each batch (a row-wise
  softmax over the batch), which is what a gallery search ranks by.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from ..config import PreprocessConfig
from ..errors import ConfigError
from ..identifier import Identifier

__all__ = [
    "SIMILARITY_TEMPERATURE",
    "Teacher",
    "class_distillation_loss",
    "load_teacher",
    "similarity_distillation_loss",
]

logger = logging.getLogger(__name__)

#: Temperature of the batch-similarity softmax: cosines differ by a few tenths between
#: the nearest photos, so 0.1 turns them into a distribution that is neither flat nor
#: one-hot.
SIMILARITY_TEMPERATURE = 0.1


def class_distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL divergence from the teacher's softened class distribution to the student's.

    Args:
        student: ``(B, C)`` student logits (scaled cosines, no margin).
        teacher: ``(B, C)`` teacher logits over the same classes.
        temperature: Softmax temperature; the loss is scaled by its square so that its
            gradients keep their size as the temperature changes (Hinton et al.).

    Returns:
        The mean over the batch of ``T^2 * KL(p_teacher || p_student)``.
    """
    if temperature <= 0:
        raise ConfigError("distillation temperature must be positive")
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def similarity_distillation_loss(
    student: Tensor, teacher: Tensor, temperature: float = SIMILARITY_TEMPERATURE
) -> Tensor:
    """Match each photo's similarity distribution over the other photos of the batch.

    Args:
        student: ``(B, D)`` student embeddings (any norm; normalised here).
        teacher: ``(B, E)`` teacher embeddings (dimensions may differ from the student's).
        temperature: Softmax temperature on the cosines.

    Returns:
        The mean over the batch of ``KL(q_teacher || q_student)``, where ``q`` is the
        softmax of a row of cosine similarities with the photo itself left out.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[0] < 2:
        raise ConfigError("similarity distillation needs two or more photos per batch")
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    n = s.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=s.device)
    sim_s = (s @ s.T)[off_diagonal].view(n, n - 1) / temperature
    sim_t = (t @ t.T)[off_diagonal].view(n, n - 1) / temperature
    return F.kl_div(
        F.log_softmax(sim_s, dim=1),
        F.log_softmax(sim_t, dim=1),
        log_target=True,
        reduction="batchmean",
    )


class Teacher:
    """A frozen identifier that provides distillation targets for a student's batches.

    Args:
        model: The teacher (a single network or an ensemble).
        labels: The student's individuals, in the order of its classes.
        student: The student's preprocessing: batches are resized to the teacher's own
            input size when the two differ; the normalisation must be the same.
        need_classes: Whether class targets are needed (then every student individual
            must be one of the teacher's classes).

    Raises:
        ConfigError: The teacher lacks a head or some of the student's individuals, or
            normalises its input differently.
    """

    def __init__(
        self,
        model: Identifier,
        labels: Sequence[str],
        student: PreprocessConfig,
        *,
        need_classes: bool,
    ) -> None:
        pp = model.config.preprocess
        if tuple(pp.mean) != tuple(student.mean) or tuple(pp.std) != tuple(student.std):
            raise ConfigError(
                "the teacher normalises its input differently from the student "
                f"(mean/std {pp.mean}/{pp.std} vs {student.mean}/{student.std})"
            )
        self.model = model.eval().requires_grad_(False)
        self.size = tuple(pp.input_size)
        self.resize = self.size != tuple(student.input_size)
        self.class_index: Tensor | None = None
        if need_classes:
            if model.head is None:
                raise ConfigError(
                    "class distillation needs a teacher with an ArcFace head over the same "
                    "individuals; use similarity distillation only (distill_weight=0)"
                )
            position = {label: i for i, label in enumerate(model.labels)}
            missing = [x for x in labels if x not in position]
            if missing:
                raise ConfigError(
                    f"the teacher was not trained on {len(missing)} of the student's "
                    f"individuals (e.g. {missing[:3]}); use similarity distillation only"
                )
            self.class_index = torch.tensor([position[x] for x in labels], dtype=torch.long)

    def to(self, device: torch.device) -> Teacher:
        """Move the teacher (and its class index) to ``device``."""
        self.model = self.model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.class_index is not None:
            self.class_index = self.class_index.to(device)
        return self

    @torch.no_grad()
    def targets(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher embeddings ``(B, E)`` and, when needed, class logits ``(B, C)``.

        The class logits are the head's scaled cosines (no margin), reordered to the
        student's classes.
        """
        if self.resize:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        emb = self.model(x).float()
        logits = None
        if self.class_index is not None and self.model.head is not None:
            cos = self.model.head.cosine(emb)
            logits = cos.index_select(1, self.class_index) * self.model.head.s
        return emb, logits


def load_teacher(names: Sequence[str]) -> Identifier:
    """Load one identifier, or several combined into an ensemble (see ``ensemble``)."""
    from ..ensemble import ensemble_identifiers  # noqa: PLC0415

    models = [Identifier.from_pretrained(name) for name in names]
    if len(models) == 1:
        return models[0]
    logger.info("teacher: an ensemble of %d identifiers", len(models))
    return ensemble_identifiers(models, name="teacher")
