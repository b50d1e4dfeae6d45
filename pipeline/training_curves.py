"""The per-epoch record of a fine-tuning run: ``history.csv`` and ``curves.png``, local or any fsspec URL."""

from __future__ import annotations

import csv
import io
from typing import Any

from pipeline import storage

HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
COLUMNS = ["epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy", "train_images", "val_images",
           "train_seconds", "images_per_second"]


def write_history(history: list[dict[str, Any]], output: str) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    fs, root = storage.filesystem(output)
    with fs.open(storage.join(root, HISTORY_FILE), "w") as f:
        f.write(text.getvalue())


def plot_curves(history: list[dict[str, Any]], output: str, title: str) -> None:
    """Accuracy and loss per epoch, train and validation; a dotted line where fine-tuning starts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    for axis, metric in zip(figure.subplots(1, 2), ("accuracy", "loss")):
        axis.plot(epochs, [row[metric] for row in history], "o-", label=f"train {metric}")
        axis.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", label=f"validation {metric}")
        stage2 = [row["epoch"] for row in history if row["stage"] == 2]
        if stage2:
            axis.axvline(stage2[0] - 0.5, color="gray", linestyle=":", label="fine-tuning starts")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    fs, root = storage.filesystem(output)
    with fs.open(storage.join(root, CURVES_FILE), "wb") as f:
        f.write(buffer.getvalue())
