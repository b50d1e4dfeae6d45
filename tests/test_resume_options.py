"""Every option of `finetune` and `label` on --resume: continued, applied or refused (exit 2, named), never ignored.

The rules are walked here option by option: a new option without a rule fails the first tests, a rule
that does not hold fails the others.
"""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import UserError
from pipeline.finetune.job import FinetuneConfig
from pipeline.finetune.resume import EPOCH_COUNTS, FIXED, IDENTITY, RUN, option_name, plan_resume, recorded_settings
from pipeline.label.config import LabelConfig, RESUME_APPLIES, RESUME_COMPARED

runner = CliRunner()


def _options(command: str) -> set[str]:
    return {param.name for param in typer.main.get_command(app).commands[command].params}


def test_every_finetune_option_has_exactly_one_resume_rule():
    rules = [*IDENTITY, *FIXED, *EPOCH_COUNTS, *RUN]
    assert len(rules) == len(set(rules))
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert set(rules) == fields
    assert _options("finetune") - {"no_augment"} == fields  # --no-augment is --augment none


def test_every_label_option_has_exactly_one_resume_rule():
    assert not set(RESUME_COMPARED) & set(RESUME_APPLIES)
    fields = {f.name for f in dataclasses.fields(LabelConfig)}
    assert set(RESUME_COMPARED) | set(RESUME_APPLIES) == fields
    assert _options("label") - {"resume", "overwrite"} <= fields  # those two are LabelConfig.mode


def _config(**changes) -> FinetuneConfig:
    return FinetuneConfig(data="data", output="out", **changes)


def _state(config: FinetuneConfig, epoch: int, stage: int = 1, stage1_end: int | None = None,
           finished: bool = False, settings: bool = True) -> dict:
    state = {"epoch": epoch, "stage": stage, "stage1_end": config.epochs if stage1_end is None else stage1_end,
             "finished": finished, "history": [], "best": None}
    if settings:
        state["settings"] = recorded_settings(config)
    return state


CHANGED = {"workers": 3, "batch_size": 16, "lr": 0.01, "fine_tune_lr_factor": 0.1, "lr_schedule": "constant",
           "dropout": 0.5, "augment": ("flip",), "cache_features": True, "unfreeze": None, "best_by": "val_loss",
           "seed": 7, "shuffle_buffer": 64}


@pytest.mark.parametrize("name", FIXED)
def test_a_changed_training_setting_is_refused_naming_the_option_and_both_values(name):
    run = _config(augment="none") if name == "cache_features" else _config()
    state = _state(run, epoch=1)
    changed = dataclasses.replace(run, **{name: CHANGED[name]})
    with pytest.raises(UserError) as err:
        plan_resume(changed, state)
    text = str(err.value)
    assert "--resume refused" in text and f"{option_name(name)} " in text, text
    assert " in the checkpoint, " in text


@pytest.mark.parametrize("name, value", [("patience", 3), ("cpus_per_worker", 0.5), ("read_retries", 1),
                                         ("verbose", True), ("use_gpu", True), ("address", "ray://head:10001")])
def test_run_settings_apply_to_the_resumed_run(name, value):
    run = _config(epochs=3)
    plan = plan_resume(dataclasses.replace(run, **{name: value}), _state(run, epoch=1))
    assert not plan.finished and plan.changes == {} and plan.stage1_end == 3


def test_more_head_epochs_continue_stage_one_and_are_recorded():
    run = _config(epochs=1)
    plan = plan_resume(_config(epochs=4), _state(run, epoch=1))
    assert (plan.stage1_end, plan.total_epochs, plan.finished) == (4, 4, False)
    assert plan.changes == {"epochs": [1, 4]}
    assert any("stage 1 continues after epoch 1 to epoch 4" in note for note in plan.notes)


def test_the_same_counts_after_the_last_epoch_mean_finished():
    run = _config(epochs=2, fine_tune_epochs=1)
    plan = plan_resume(run, _state(run, epoch=3, stage=2))
    assert plan.finished and plan.changes == {}
    assert not plan_resume(run, _state(run, epoch=2)).finished


def test_fewer_epochs_than_trained_are_refused_naming_the_count_to_pass():
    run = _config(epochs=3)
    with pytest.raises(UserError, match=r"--epochs 2: .* has trained 3 epochs of stage 1 already; pass --epochs 3"):
        plan_resume(_config(epochs=2), _state(run, epoch=3))


def test_a_stage_that_is_over_cannot_change_length():
    run = _config(epochs=3, fine_tune_epochs=2)
    in_stage_two = _state(run, epoch=4, stage=2)
    with pytest.raises(UserError, match=r"--epochs 5: stage 1 .* is over: it ended after epoch 3; resume with --epochs 3"):
        plan_resume(_config(epochs=5, fine_tune_epochs=2), in_stage_two)
    more = plan_resume(_config(epochs=3, fine_tune_epochs=4), in_stage_two)
    assert (more.total_epochs, more.finished, more.changes) == (7, False, {"fine_tune_epochs": [2, 4]})
    with pytest.raises(UserError, match=r"--fine-tune-epochs 0: .* has fine-tuned 1 epoch already"):
        plan_resume(_config(epochs=3, fine_tune_epochs=0), in_stage_two)
    # patience ended stage 1 after epoch 2 of 3: it is over too, though --epochs is unchanged
    early = _state(run, epoch=2, stage1_end=2)
    assert plan_resume(run, early).stage1_end == 2
    with pytest.raises(UserError, match=r"ended after epoch 2 \(--patience\)"):
        plan_resume(_config(epochs=4, fine_tune_epochs=2), early)


def test_fine_tuning_can_be_added_after_stage_one_finished():
    run = _config(epochs=2)
    plan = plan_resume(_config(epochs=2, fine_tune_epochs=2), _state(run, epoch=2))
    assert (plan.stage1_end, plan.total_epochs, plan.finished) == (2, 4, False)


def test_a_run_stopped_by_patience_refuses_other_counts():
    run = _config(epochs=5, patience=1)
    stopped = _state(run, epoch=3, finished=True)
    assert plan_resume(run, stopped).finished
    with pytest.raises(UserError, match="stopped early after epoch 3"):
        plan_resume(_config(epochs=8, patience=1), stopped)


def test_a_checkpoint_without_recorded_settings_still_continues_to_more_epochs():
    run = _config(epochs=2)
    plan = plan_resume(_config(epochs=3, lr=0.5), _state(run, epoch=1, settings=False))
    assert (plan.stage1_end, plan.changes) == (3, {"epochs": [2, 3]})


# --- label: compared options refused on a real OUTPUT, before Ray ----------------------------------------

LABEL_CHANGES = [
    (["--model", "efficientnet_lite1"], "model:"),
    (["--weights", "none"], "weights:"),
    (["--top-k", "3"], "top-k:"),
    (["--resize", "center-crop"], "resize-mode:"),
    (["--precision", "mixed"], "precision:"),
    (["--xla"], "xla:"),
    (["--embeddings"], "embeddings:"),
]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("resume_photos")
    (folder / "a.png").write_bytes(photos["chelsea"].read_bytes())
    output = tmp_path_factory.mktemp("resume_out") / "out"
    result = runner.invoke(app, ["label", str(folder), str(output), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    return folder, output


@pytest.mark.slow
@pytest.mark.parametrize("args, named", LABEL_CHANGES)
def test_label_resume_with_another_compared_option_is_refused_naming_it(labeled, args, named):
    folder, output = labeled
    result = runner.invoke(app, ["label", str(folder), str(output), "--resume", *args])
    assert result.exit_code == 2, result.output
    assert "--resume" in result.output and named in result.output, result.output


def test_label_compared_options_are_the_ones_walked_here():
    walked = {arg[0][2:].replace("-", "_") for arg, _ in LABEL_CHANGES}
    # The rest describe a user's own model file and are compared through its identity (tests/test_user_model.py).
    own_model = {"classes", "preprocess", "input_size", "head", "multi_label", "threshold"}
    assert walked | own_model == set(RESUME_COMPARED)
