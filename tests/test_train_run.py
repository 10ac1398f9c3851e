"""The library's typed training run (emojidiff_pipeline.train.run): what the stage CLIs map their flags onto."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import train_decoupled  # noqa: E402

from emojidiff_pipeline.train.face_losses import FaceLossConfig  # noqa: E402
from emojidiff_pipeline.train.run import (  # noqa: E402
    AdapterSpec,
    AniConfig,
    FaceFrontEnd,
    IDISettings,
    Stage1Config,
    TrainingRun,
    TripletSource,
    run_idi,
    train_ica_run,
)


def a_run(**changes) -> TrainingRun:
    run = TrainingRun(
        pretrained_model="base",
        output_dir="out",
        data=TripletSource(triplets="t.jsonl"),
        face=FaceFrontEnd(recognizer="r.onnx"),
        config=Stage1Config(max_steps=10, batch_size=2),
    )
    return run.replace(**changes)


def test_replace_changes_fields_of_the_parts_and_leaves_the_original():
    run = a_run()
    other = run.replace(config=dict(seed=4), adapter=dict(path="a"), output_dir="elsewhere")
    assert (other.config.seed, other.config.max_steps, other.adapter.path, other.output_dir) == (
        4,
        10,
        "a",
        "elsewhere",
    )
    assert (run.config.seed, run.adapter.path, run.output_dir) == (0, None, "out")
    assert other.adapter.expression_layers == AdapterSpec().expression_layers


def test_triplet_source_takes_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of `triplets` and `same_identity_from`"):
        TripletSource()
    with pytest.raises(ValueError, match="exactly one"):
        TripletSource(triplets="a", same_identity_from="b")
    with pytest.raises(ValueError, match="`num_references` must be >= 1, got 0"):
        TripletSource(triplets="a", num_references=0)


def test_face_front_end_needs_a_recognizer_and_a_detector_for_generated_images():
    with pytest.raises(ValueError, match="Identity embeddings need `recognizer`"):
        FaceFrontEnd().build()
    with pytest.raises(ValueError, match="need a face detector"):
        FaceFrontEnd(recognizer=str(REPO / "missing.onnx")).build(need_detector=True)


def test_ica_and_idi_refuse_a_run_they_cannot_start_before_loading_anything():
    with pytest.raises(ValueError, match="ICA fine-tunes a stage-1 adapter: set `adapter.path`"):
        train_ica_run(a_run(), AniConfig())
    with pytest.raises(ValueError, match="IDI draws its pairs from a collection"):
        run_idi(a_run(), IDISettings(expression_estimator="m:f"))
    idi_run = a_run(data=TripletSource(same_identity_from="c.jsonl"))
    with pytest.raises(ValueError, match="needs `swapper_model`"):
        run_idi(idi_run, IDISettings(expression_estimator="m:f", swapper="inswapper"))


def test_stage_flags_map_onto_the_run():
    flags = "--pretrained_model p --triplets t.jsonl --recognizer r.onnx --output_dir o --max_steps 7 --seed 5"
    flags += " --strip_prompt_words smiling,frowning --expression_loss_weight 2 --expression_loss_model m:f"
    flags += " --expression_loss_factor_weights 1,2,3 --expression_layers all"
    run = train_decoupled.flags.training_run(train_decoupled.parse_args(flags.split()))
    assert (run.config.max_steps, run.config.seed, run.adapter.seed, run.data.seed) == (7, 5, 5, 5)
    assert run.data.strip_prompt_words == ("smiling", "frowning") and run.adapter.expression_layers == "all"
    assert run.config.face_losses == FaceLossConfig(
        expression_weight=2.0, max_timestep=400, expression_factor_weights=(1.0, 2.0, 3.0)
    )
    assert run.expression_loss_model == "m:f" and run.face == FaceFrontEnd(recognizer="r.onnx")
    with pytest.raises(SystemExit):
        train_decoupled.parse_args([*flags.split()[:-2], "--expression_loss_factor_weights", "1,x"])
    with pytest.raises(SystemExit):  # nothing to mask without the alignment loss
        train_decoupled.parse_args([*flags.split(), "--alignment_mask"])
    masked = flags + " --identity_loss_model m:g --alignment_loss_weight 1 --alignment_mask"
    config = train_decoupled.flags.training_run(train_decoupled.parse_args(masked.split())).config.face_losses
    assert config.alignment_mask and config.alignment_weight == 1.0
