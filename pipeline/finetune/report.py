"""What the exported model gets right and wrong on validation: per-class precision/recall, confusion matrix PNG.

Computed from the validation confusion matrix of the exported (best) epoch, which the
workers sum across shards; written next to the model in OUTPUT (local or any fsspec URL).
"""

from __future__ import annotations

import csv
import io

import numpy as np

from pipeline import storage

PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion_matrix.png"
MAX_CLASSES_DRAWN = 60  # beyond this a matrix picture is unreadable; the CSV still has every class


def per_class(confusion: np.ndarray, class_names: list[str]) -> list[dict[str, float | int | str]]:
    """precision = right / predicted as the class, recall = right / truly the class (rows: true class)."""
    right = np.diag(confusion)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    rows = []
    for i, name in enumerate(class_names):
        rows.append({"class": name, "precision": float(right[i] / predicted[i]) if predicted[i] else 0.0,
                     "recall": float(right[i] / actual[i]) if actual[i] else 0.0, "support": int(actual[i])})
    return rows


def worst_confused(confusion: np.ndarray, class_names: list[str], count: int = 3) -> list[tuple[str, str, int]]:
    """The ``count`` largest off-diagonal cells: (true class, predicted class, images)."""
    off = np.array(confusion, dtype=np.int64)
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:count]
    pairs = [(class_names[i], class_names[j], int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape))]
    return [pair for pair in pairs if pair[2] > 0]


def write_report(confusion: np.ndarray, class_names: list[str], output: str, epoch: int) -> None:
    """``per_class.csv`` and ``confusion_matrix.png`` in OUTPUT."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["class", "precision", "recall", "support"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(per_class(confusion, class_names))
    fs, root = storage.filesystem(output)
    fs.pipe_file(storage.join(root, PER_CLASS_FILE), text.getvalue().encode("utf-8"))
    fs.pipe_file(storage.join(root, CONFUSION_FILE),
                 confusion_png(confusion, class_names, f"validation confusion matrix, epoch {epoch}"))


def confusion_png(confusion: np.ndarray, class_names: list[str], title: str) -> bytes:
    """The matrix as a PNG (rows: true class), counts written in when it is small; ``title`` on top."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    shown = min(len(class_names), MAX_CLASSES_DRAWN)
    matrix, names = np.asarray(confusion)[:shown, :shown].astype(np.int64), class_names[:shown]
    side = max(4.0, 0.35 * shown + 2)
    figure = Figure(figsize=(side + 1, side), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, shrink=0.8)
    axis.set_xticks(range(shown), names, rotation=90)
    axis.set_yticks(range(shown), names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if shown <= 20:
        for i in range(shown):
            for j in range(shown):
                if matrix[i, j]:
                    axis.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                              color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    more = f" (first {shown} of {len(class_names)} classes)" if shown < len(class_names) else ""
    axis.set_title(f"{title}{more}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
