"""Fine-tuning settings and data decisions that need no training: config checks, the split, the frozen base."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import UserError
from pipeline.finetune.job import FinetuneConfig
from pipeline.finetune.resume import check_same_run
from pipeline.finetune.data import hash_split, list_class_folders, split_digest

runner = CliRunner()


def _text(output: str) -> str:
    """Click/Rich error boxes wrap lines: compare on the words."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.mark.parametrize("options, message", [
    ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
    ({"workers": 0}, "--workers must be at least 1"),
    ({"cpus_per_worker": 0}, "--cpus-per-worker 0 must be more than 0"),
    ({"augment": "flip,blur"}, "unknown transform(s) blur"),
    ({"best_by": "accuracy"}, "--best-by 'accuracy' should be one of val_accuracy, val_loss"),
    ({"patience": -1}, "--patience must be 0"),
    ({"storage_options": "{not json"}, "--storage-options is not valid JSON"),
    ({"storage_options": "[1, 2]"}, "--storage-options must be a JSON object"),
    ({"cache_features": True}, "add --augment none"),
    ({"dropout": 1.0}, "--dropout 1 should be at least 0 and below 1"),
    ({"resize": "stretch"}, "--resize 'stretch' is not one of squash, center-crop"),
    ({"decode": "sometimes"}, "--decode 'sometimes' should be one of auto, once, every-epoch"),
])
def test_the_config_refuses_bad_settings_itself(options, message):
    """The CLI, jobs/finetune.py and library callers all get these checks from FinetuneConfig."""
    with pytest.raises(UserError, match=None) as caught:
        FinetuneConfig("data", "out", **options)
    assert message in str(caught.value)


def test_the_config_parses_augment_and_json_options():
    config = FinetuneConfig("data", "out", augment="Rotate, zoom,rotate", storage_options='{"anon": true}')
    assert config.augment == ("rotate", "zoom") and config.storage_options == {"anon": True}
    assert FinetuneConfig("data", "out", augment="none").augment == ()
    assert FinetuneConfig("data", "out").augment == ("flip", "rotate", "zoom")  # the documented default


def test_cli_refuses_resume_with_overwrite_and_unknown_augmentation_while_parsing(tmp_path):
    """Parse-time checks: 'pipeline submit finetune' runs the same parser before it uploads anything."""
    for args in (["--resume", "--overwrite"], ["--overwrite", "--resume"]):
        result = runner.invoke(app, ["finetune", str(tmp_path), str(tmp_path / "out"), *args])
        assert result.exit_code == 2 and "exclude each other" in _text(result.output)
    result = runner.invoke(app, ["finetune", str(tmp_path), str(tmp_path / "out"), "--augment", "flip,shear"])
    assert result.exit_code == 2 and "unknown transform(s) shear" in _text(result.output)
    from pipeline.submit import validate_job_args

    with pytest.raises(UserError, match="unknown transform"):
        validate_job_args("finetune", ["data", "out", "--augment", "flip,shear"])
    with pytest.raises(UserError, match="exclude each other"):
        validate_job_args("finetune", ["data", "out", "--resume", "--overwrite"])


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"img_{i:04d}.png").write_bytes(b"not decoded here")
    return root


def test_adding_images_never_moves_others_between_training_and_validation(tmp_path):
    root = _tree(tmp_path / "data", {"cat": 200, "dog": 150})
    before = hash_split(list_class_folders(str(root)), 0.2)
    assert 0.12 < len(before.val) / 350 < 0.28 and {label for _, label in before.val} == {0, 1}
    _tree(root, {"cat": 230, "dog": 150, })  # 30 new cats
    after = hash_split(list_class_folders(str(root)), 0.2)
    assert set(before.val) <= set(after.val) and set(before.train) <= set(after.train)
    assert split_digest(before) != split_digest(after)
    # The decision depends on the path below the class folder, not on where DATA lives.
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    again = hash_split(list_class_folders(str(moved)), 0.2)
    assert [Path(p).name for p, _ in again.val] == [Path(p).name for p, _ in after.val]


def test_every_class_keeps_an_image_on_each_side(tmp_path):
    root = _tree(tmp_path / "data", {"a": 2, "b": 3, "c": 40})
    files = hash_split(list_class_folders(str(root)), 0.2)
    for label in range(3):
        assert any(item[1] == label for item in files.val) and any(item[1] == label for item in files.train)


def test_resume_check_names_what_changed():
    saved = {"class_names": ["cat", "dog"], "base": "efficientnet_lite0", "image_size": 96, "split_digest": "a"}
    check_same_run(saved, dict(saved), "out")  # the same run: no error
    with pytest.raises(UserError, match=r"class folders \(new now: fox; missing now: none\)"):
        check_same_run(saved, {**saved, "class_names": ["cat", "dog", "fox"]}, "out")
    with pytest.raises(UserError, match=r"--image-size \(96 in the checkpoint, 64 now\)"):
        check_same_run(saved, {**saved, "image_size": 64}, "out")
    with pytest.raises(UserError, match="training/validation files"):
        check_same_run(saved, {**saved, "split_digest": "b"}, "out")
    # A checkpoint from before --resize was trained on squashed images: it resumes as squash, not as center-crop.
    check_same_run(saved, {**saved, "resize": "squash"}, "out")
    with pytest.raises(UserError, match=r"--resize \(squash in the checkpoint, center-crop now\)"):
        check_same_run(saved, {**saved, "resize": "center-crop"}, "out")
    cropped = {**saved, "resize": "center-crop"}
    with pytest.raises(UserError, match=r"--resize \(center-crop in the checkpoint, squash now\)"):
        check_same_run(cropped, {**cropped, "resize": "squash"}, "out")


def test_the_frozen_base_runs_in_inference_mode_while_the_head_trains():
    """EfficientNetB0 has stochastic-depth dropout inside: with training=True a plainly nested base would
    apply it (Keras 3 passes the outer flag down); our wrapped base must give the same features every call."""
    import keras

    from pipeline.finetune.model import build_classifier

    model = build_classifier("efficientnet_b0", 32, 3, weights=None, dropout=0.0)
    plain = build_classifier("efficientnet_b0", 32, 3, weights=None, dropout=0.0, inference_base=False)
    plain.set_weights(model.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    features = keras.Model(model.input, model.get_layer("head_pool").output)
    plain_features = keras.Model(plain.input, plain.get_layer("head_pool").output)
    first, second = (np.asarray(features(images, training=True)) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, np.asarray(features(images, training=False)), rtol=1e-5, atol=1e-6)
    # The hazard the wrapper removes: the plainly nested base is not deterministic in training mode.
    assert not np.allclose(np.asarray(plain_features(images, training=True)),
                           np.asarray(plain_features(images, training=True)))


def test_ray_train_hands_the_shorter_health_check_to_the_controller_unless_the_user_set_one(monkeypatch):
    # Ray Train's own list of what the driver passes on to its controller actor (DataParallelTrainer uses it)
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from pipeline.finetune.job import HEALTH_CHECK_ENV, HEALTH_CHECK_SECONDS, controller_checks_often

    monkeypatch.delenv(HEALTH_CHECK_ENV, raising=False)
    with controller_checks_often():
        assert get_env_vars_to_propagate().get(HEALTH_CHECK_ENV) == HEALTH_CHECK_SECONDS
    assert HEALTH_CHECK_ENV not in get_env_vars_to_propagate()  # this process's environment is left as it was
    monkeypatch.setenv(HEALTH_CHECK_ENV, "3")
    with controller_checks_often():
        assert get_env_vars_to_propagate()[HEALTH_CHECK_ENV] == "3"


def test_auto_decodes_once_while_the_images_take_half_the_object_store_and_streams_beyond():
    from pipeline.finetune.data import choose_decode

    cluster = {"CPU": 4.0, "object_store_memory": 8 * 2**30}
    fits = 8 * 2**30 // 2 // (96 * 96 * 3)  # images at 96 px that take exactly half the store
    assert choose_decode("auto", fits, 96, cluster, worker_cpus=2.0).mode == "once"
    beyond = choose_decode("auto", fits + 1, 96, cluster, worker_cpus=2.0)
    assert beyond.mode == "every-epoch" and "more than half of Ray's 8.0 GiB object store" in beyond.line
    # With no CPU left beside the workers, decode tasks could never run during training: once, spilled.
    full = choose_decode("auto", 3 * fits, 96, cluster, worker_cpus=4.0)
    assert full.mode == "once" and "the rest spilled to local disk" in full.line
    assert choose_decode("once", 3 * fits, 96, cluster, worker_cpus=2.0).mode == "once"
    assert choose_decode("every-epoch", 10, 96, cluster, worker_cpus=2.0).mode == "every-epoch"
    with pytest.raises(UserError, match="lower --workers or --cpus-per-worker, or use --decode once"):
        choose_decode("every-epoch", 10, 96, cluster, worker_cpus=3.5)


@pytest.mark.parametrize("accuracies, fine_tune_epochs, finished, stage1_end", [
    ([0.5, 0.4, 0.3], 0, True, 6),  # patience runs out at epoch 3 of 6: the run stops early
    ([0.5, 0.6, 0.7, 0.8, 0.7, 0.6], 0, False, 6),  # patience runs out at the last epoch: not early
    ([0.5, 0.4, 0.3], 2, False, 3),  # in stage 1 (of 6): fine-tuning starts after epoch 3 instead
])
def test_patience_stops_the_run_early_only_when_epochs_were_left(accuracies, fine_tune_epochs, finished,
                                                                  stage1_end):
    import keras

    from pipeline.finetune.worker import RunProgress, record_epoch
    from pipeline.finetune.worker_settings import WorkerSettings

    settings = WorkerSettings(
        base="efficientnet_lite0", start_from=None, keep_head=False, storage_options={}, image_size=32,
        num_classes=2, fine_tune_epochs=fine_tune_epochs, unfreeze=None, batch_size=4, lr=1e-3,
        fine_tune_lr_factor=0.1, lr_schedule="constant", dropout=0.0, augment=(), cache_features=False,
        cpus_per_worker=1, monitor="val_accuracy", patience=2, seed=0, shuffle_buffer=8, identity={},
        recorded_settings={}, stage1_end=6, resume_changes={}, steps_per_epoch=1)
    progress = RunProgress({"epoch": 0, "stage": 1, "history": [], "best": None, "stale": 0, "stage1_end": 6,
                            "finished": False, "identity": {}})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    logs: list[str] = []
    for epoch, accuracy in enumerate(accuracies, start=1):
        metrics = {"epoch": epoch, "stage": 1, "loss": 1.0, "accuracy": accuracy, "val_loss": 1.0,
                   "val_accuracy": accuracy, "learning_rate": 1e-3, "images_per_second": 1.0}
        record_epoch(metrics, np.zeros((2, 2)), model, settings, progress, logs.append)
    assert progress.state["finished"] is finished
    assert progress.state["stage1_end"] == stage1_end
    assert any("stopping after epoch" in line for line in logs) is finished, logs
