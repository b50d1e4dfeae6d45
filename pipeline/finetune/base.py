"""What ``--base`` names: a registry model (ImageNet weights), or a fine-tuned model folder to train further.

A folder written by ``pipeline finetune`` is a registry backbone with a head for its classes. Fine-tuning it
again starts from all its weights: with the same classes (in the same order: the sorted class names) its
head is kept and training continues; with other classes the backbone is kept and the head is new. The
exported model records what it started from (its metadata's ``training.started_from``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.models.registry import REGISTRY, ModelSpec, get_spec


@dataclass(frozen=True)
class TrainingBase:
    spec: ModelSpec  # the registry backbone (its preprocess_input is the model's)
    model: str | None = None  # the fine-tuned folder training starts from; None: the backbone's ImageNet weights
    class_names: tuple[str, ...] | None = None  # that folder's classes
    input_size: int | None = None  # the size that folder was trained at

    @property
    def identity(self) -> str:
        """What a run records as its base: the registry name, or the folder it started from."""
        return self.model or self.spec.name

    def keeps_head(self, class_names: list[str]) -> bool:
        return self.class_names is not None and tuple(class_names) == self.class_names

    def describe(self, class_names: list[str]) -> str:
        if self.model is None:
            return f"base {self.spec.name} with ImageNet weights"
        if self.keeps_head(class_names):
            return (f"starting from the fine-tuned model '{self.model}' ({self.spec.name}): the same "
                    f"{len(class_names)} classes, so its head is kept and trained further")
        return (f"starting from the fine-tuned model '{self.model}' ({self.spec.name}): its backbone with a new "
                f"head for these {len(class_names)} classes (it had {len(self.class_names or ())})")


def resolve_base(base: str) -> TrainingBase:
    """The base ``--base`` names; UserError (with the closest registry names) when it is neither."""
    from pipeline.models import artifact

    if base.lower().replace("-", "_") in REGISTRY:
        return TrainingBase(get_spec(base))
    if artifact.is_artifact(base):
        meta = artifact.read_meta(base)
        return TrainingBase(get_spec(meta.base), base, tuple(meta.class_names), meta.input_size)
    if base.lower().endswith((".keras", ".h5")):
        raise UserError(f"--base '{base}': a Keras model file of your own cannot be a base yet; pass a registry "
                        "name (see 'pipeline models') or a folder written by 'pipeline finetune'")
    get_spec(base)  # an unknown name: UnknownModelError suggests the closest registry names
    raise AssertionError("unreachable")
