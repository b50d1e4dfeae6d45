"""Score labeling OUTPUTs against the truth: accuracy, top-k, per-class precision/recall/F1, confusion.

The truth is a labels table or a class-per-folder tree (read as fine-tuning reads DATA). Each OUTPUT row is
joined with the truth by image identity, the same identity labeling gives every image. Nothing is dropped
silently: truth images the OUTPUT has no row for, OUTPUT rows the truth does not name, and rows whose image
failed in labeling are counted; only images with both a truth and a prediction are scored.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.finetune.data import LabelsSource, check_classes, read_labeled
from pipeline.listing import identities

CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
PER_CLASS_CSV = "per_class.csv"
METRICS_JSON = "metrics.json"


@dataclass
class Evaluation:
    predictions: str  # the labeling OUTPUT
    model: str | None  # from its manifest
    class_names: list[str]  # the truth's classes, then any other label the model predicted, each sorted
    truth_classes: int  # how many of class_names are the truth's
    confusion: np.ndarray  # [true class, predicted class] image counts
    top_k_correct: int = 0  # scored images whose true class is among the row's top labels
    k: int = 0  # how many top labels the rows hold
    no_prediction: int = 0  # truth images without a row in the OUTPUT
    no_truth: int = 0  # OUTPUT rows whose image the truth does not name
    failed: int = 0  # OUTPUT rows with an error, for images the truth names
    notes: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.scored) if self.scored else 0.0

    @property
    def top_k_accuracy(self) -> float:
        return self.top_k_correct / self.scored if self.scored else 0.0

    def per_class(self) -> list[dict[str, float | int | str]]:
        """precision = right / predicted as the class; recall = right / truly the class; F1 their harmonic mean."""
        right = np.diag(self.confusion)
        predicted, actual = self.confusion.sum(axis=0), self.confusion.sum(axis=1)
        rows = []
        for i, name in enumerate(self.class_names[:self.truth_classes]):
            precision = float(right[i] / predicted[i]) if predicted[i] else 0.0
            recall = float(right[i] / actual[i]) if actual[i] else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1,
                         "support": int(actual[i])})
        return rows

    def most_confused(self, count: int = 5) -> list[tuple[str, str, int]]:
        """The ``count`` largest off-diagonal cells: (true class, predicted class, images)."""
        off = np.array(self.confusion, dtype=np.int64)
        np.fill_diagonal(off, 0)
        order = np.argsort(off, axis=None, kind="stable")[::-1][:count]
        pairs = [(self.class_names[i], self.class_names[j], int(off[i, j]))
                 for i, j in zip(*np.unravel_index(order, off.shape))]
        return [pair for pair in pairs if pair[2] > 0]

    def metrics(self) -> dict:
        return {"predictions": self.predictions, "model": self.model, "images_scored": self.scored,
                "accuracy": self.accuracy, f"top_{self.k}_accuracy": self.top_k_accuracy,
                "no_prediction": self.no_prediction, "no_truth": self.no_truth, "failed": self.failed,
                "macro_f1": float(np.mean([row["f1"] for row in self.per_class()])) if self.truth_classes else 0.0,
                "most_confused": [list(pair) for pair in self.most_confused()]}


def read_truth(truth: str, source: LabelsSource = LabelsSource()) -> tuple[dict[str, str], list[str]]:
    """{image identity: true class} from a labels table or class folders, and notes on what was left out."""
    classes, notes = read_labeled(truth, source, what="--truth")
    check_classes(classes, truth, what="--truth")
    paths = [p for name in classes for p in classes[name]]
    names = [name for name in classes for _ in classes[name]]
    return dict(zip(identities(pa.array(paths, pa.string())).to_pylist(), names)), notes


def evaluate(predictions: str, truth: dict[str, str]) -> Evaluation:
    """Join ``predictions`` (a labeling OUTPUT) with ``truth`` ({identity: class}) and score it."""
    from pipeline.label.manifest import read_manifest
    from pipeline.results import part_tables

    manifest = read_manifest(predictions)
    truth_classes = sorted(set(truth.values()))
    rows = pa.concat_tables(list(part_tables(predictions, ["path", "label", "top_labels", "error"])),
                            promote_options="permissive").to_pydict()
    others = sorted({label for label in rows["label"] if label is not None} - set(truth_classes))
    names = truth_classes + others
    index = {name: i for i, name in enumerate(names)}
    result = Evaluation(predictions, manifest.model if manifest else None, names, len(truth_classes),
                        np.zeros((len(names), len(names)), np.int64))
    seen = set()
    for path, label, top, error in zip(rows["path"], rows["label"], rows["top_labels"], rows["error"]):
        true = truth.get(path)
        if true is None:
            result.no_truth += 1
            continue
        seen.add(path)
        if error is not None or label is None:
            result.failed += 1
            continue
        result.confusion[index[true], index[label]] += 1
        result.k = max(result.k, len(top or []))
        result.top_k_correct += true in (top or [])
    result.no_prediction = len(truth) - len(seen)
    return result


def write_evaluation(result: Evaluation, out: str) -> None:
    """metrics.json, per_class.csv, confusion_matrix.csv and confusion_matrix.png in ``out``."""
    from pipeline.finetune.report import confusion_png

    fs, root = storage.filesystem(out)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(storage.join(root, METRICS_JSON), json.dumps(result.metrics(), indent=2).encode())
    fs.pipe_file(storage.join(root, PER_CLASS_CSV), _csv(result.per_class(),
                                                         ["class", "precision", "recall", "f1", "support"]))
    matrix = [{"true class": name, **{p: int(n) for p, n in zip(result.class_names, row)}}
              for name, row in zip(result.class_names[:result.truth_classes], result.confusion)]
    fs.pipe_file(storage.join(root, CONFUSION_CSV), _csv(matrix, ["true class", *result.class_names]))
    fs.pipe_file(storage.join(root, CONFUSION_PNG),
                 confusion_png(result.confusion[:result.truth_classes, :result.truth_classes],
                               result.class_names[:result.truth_classes], f"{result.predictions} against the truth"))


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")
