"""The per-epoch record of a fine-tuning run: ``history.csv`` and ``curves.png``, local or any fsspec URL."""

from __future__ import annotations

import csv
import io
from typing import Any

from pipeline import storage

HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
COLUMNS = ["epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "train_images",
           "val_images", "train_seconds", "images_per_second", "exported"]


def write_history(history: list[dict[str, Any]], output: str, chosen_epoch: int) -> None:
    """One row per epoch; ``exported`` is 1 on the epoch whose weights are the exported model."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "exported": int(row["epoch"] == chosen_epoch)} for row in history)
    fs, root = storage.filesystem(output)
    fs.pipe_file(storage.join(root, HISTORY_FILE), text.getvalue().encode("utf-8"))


def plot_curves(history: list[dict[str, Any]], output: str, title: str, chosen_epoch: int,
                best_by: str = "val_accuracy") -> None:
    """Accuracy and loss per epoch, train and validation; where fine-tuning starts; the exported epoch."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    chosen = next(row for row in history if row["epoch"] == chosen_epoch)
    figure = Figure(figsize=(10, 4), layout="constrained")
    for axis, metric in zip(figure.subplots(1, 2), ("accuracy", "loss")):
        axis.plot(epochs, [row[metric] for row in history], "o-", label=f"train {metric}")
        axis.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", label=f"validation {metric}")
        stage2 = [row["epoch"] for row in history if row["stage"] == 2]
        if stage2:
            axis.axvline(stage2[0] - 0.5, color="gray", linestyle=":", label="fine-tuning starts")
        axis.axvline(chosen_epoch, color="green", linestyle="--", alpha=0.6)
        axis.plot([chosen_epoch], [chosen[f"val_{metric}"]], "*", color="green", markersize=16,
                  label=f"exported: epoch {chosen_epoch} (best {best_by})")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    fs, root = storage.filesystem(output)
    fs.pipe_file(storage.join(root, CURVES_FILE), buffer.getvalue())
