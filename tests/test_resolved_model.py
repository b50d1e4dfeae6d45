"""The labeling driver looks at its model once: one metadata read, one digest, whatever the model is."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.models import artifact, resolved, user_model

runner = CliRunner()


@pytest.fixture()
def finetuned(tmp_path):
    """A fine-tuned model folder as far as labeling's driver reads it: metadata and model bytes (the
    driver digests the file; only the predictor actors load it)."""
    folder = tmp_path / "cats"
    folder.mkdir()
    (folder / artifact.MODEL_FILE).write_bytes(b"model bytes")
    meta = artifact.ArtifactMeta(base="efficientnet_lite0", input_size=96, class_names=["cat", "dog"],
                                 resize="center-crop")
    (folder / artifact.META_FILE).write_text(json.dumps(meta.__dict__))
    return folder


def _count_calls(monkeypatch, module, name: str) -> list:
    calls: list = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_fine_tuned_model_is_read_once_by_the_driver(finetuned, photo_dir, tmp_path, monkeypatch):
    resolved._cached_digest.cache_clear()
    metadata_reads = _count_calls(monkeypatch, artifact, "read_meta")
    probes = _count_calls(monkeypatch, artifact, "is_artifact")
    digests = _count_calls(monkeypatch, user_model, "file_digest")
    result = runner.invoke(app, ["label", str(photo_dir), str(tmp_path / "out"), "--model", str(finetuned),
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (len(metadata_reads), len(probes), len(digests)) == (1, 1, 1)


def test_the_resolved_model_carries_what_the_job_and_its_manifest_need(finetuned):
    model = resolved.resolve_model(str(finetuned))
    assert (model.kind, model.name, model.input_size, model.resize_mode) == ("artifact", str(finetuned), 96,
                                                                             "center-crop")
    assert model.class_names == ("cat", "dog") and model.base == "efficientnet_lite0"
    assert model.identity["kind"] == "finetuned" and model.identity["classes"] == ["cat", "dog"]
    assert len(model.identity["sha256"]) == 64
    registry = resolved.resolve_model("EfficientNet-Lite0")
    assert (registry.kind, registry.name, registry.input_size, len(registry.class_names)) == (
        "registry", "efficientnet_lite0", 224, 1000)


def test_weights_for_a_fine_tuned_model_are_refused_not_ignored(finetuned, photo_dir, tmp_path):
    weights = tmp_path / "other.weights.h5"
    weights.write_bytes(b"weights")
    result = runner.invoke(app, ["label", str(photo_dir), str(tmp_path / "out"), "--model", str(finetuned),
                                 "--weights", str(weights), "--dry-run"])
    assert result.exit_code == 2
    assert "carries its own weights" in result.output and "Leave --weights out" in result.output
