"""The layer probe (layer_probe.py, training/probe_layers.py): blocks, per-block scale dicts, the probe's table."""

import json
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_components

from emojidiff_pipeline.layer_probe import attention_blocks, probe_blocks, suggest_preset
from emojidiff_pipeline.layers import expand_block_dict, unet_layers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))


@pytest.fixture(scope="module")
def layers():
    return unet_layers(tiny_components()["unet"])


def test_blocks_cover_every_cross_attention_layer_and_scale_dicts_hit_one_block(layers):
    blocks = attention_blocks(layers)
    cross = [n for n, info in layers.items() if info.is_cross_attention]
    assert len(blocks) >= 2 and len({b.name for b in blocks}) == len(blocks)
    assert {next(b.name for b in blocks if n.startswith(b.name + ".")) for n in cross} == {b.name for b in blocks}
    for b in blocks:
        values = expand_block_dict(layers, b.scale_dict(1.0, 0.0, blocks))
        on = {n for n, v in values.items() if v == 1.0}
        assert on == {n for n in cross if n.startswith(b.name + ".")}  # this block only
        values = expand_block_dict(layers, b.scale_dict(0.0, 1.0, blocks))
        assert {n for n, v in values.items() if v == 0.0} == on  # everything but this block
    subset = attention_blocks(layers, names=[n for n in cross if n.startswith("up_blocks")])
    assert subset and all(b.path == "up" for b in subset)


def test_probe_table_gains_and_preset(layers):
    blocks = attention_blocks(layers)
    helpful = blocks[-1]  # a fake world: only the last block carries expression, the first leaks style

    def score(scale):
        if isinstance(scale, float):
            err = 0.20 if scale == 0.0 else 0.10
            return {
                "expression_error": err,
                "expression_error_se": 0.005,
                "style_leakage": 0.02,
                "identity_leakage": 0.0,
                "identity_similarity": 0.3,
            }
        values = expand_block_dict(layers, scale)
        on = {n for n, v in values.items() if v == 1.0}
        has_helpful = any(n.startswith(helpful.name + ".") for n in on)
        has_first = any(n.startswith(blocks[0].name + ".") for n in on)
        return {
            "expression_error": 0.10 if has_helpful else 0.20,
            "expression_error_se": 0.005,
            "style_leakage": 0.5 if has_first else 0.01,
            "identity_leakage": 0.0,
            "identity_similarity": 0.3,
        }

    result = probe_blocks(blocks, score)
    assert set(result["blocks"]) == {b.name for b in blocks}
    assert result["blocks"][helpful.name]["gain_only"] == pytest.approx(0.10)
    assert result["blocks"][helpful.name]["gain_without"] == pytest.approx(-0.10)  # removing it hurts
    assert result["blocks"][blocks[0].name]["gain_only"] == pytest.approx(0.0)
    preset = suggest_preset(result, blocks)
    on = {n for n, v in expand_block_dict(layers, preset).items() if v == 1.0}
    assert on == {n for n in layers if n.startswith(helpful.name + ".") and layers[n].is_cross_attention}
    with pytest.raises(ValueError, match="nothing to probe"):
        probe_blocks([], score)


def test_suggest_preset_drops_style_leaks_beyond_the_noise(layers):
    """Style leakage is a rate over num_cases: a block one case above the all-blocks adapter stays in the preset,
    one far above (or any excess when the count is unknown) is dropped."""
    blocks = attention_blocks(layers)[:3]
    common = {"expression_error": 0.10, "expression_error_se": 0.005, "num_cases": 128}
    result = {
        "off": {"expression_error": 0.20},
        "all": {"expression_error": 0.08, "style_leakage": 7 / 128},
        "blocks": {
            blocks[0].name: {"gain_only": 0.10, "only": dict(common, style_leakage=8 / 128)},
            blocks[1].name: {"gain_only": 0.10, "only": dict(common, style_leakage=20 / 128)},
            blocks[2].name: {"gain_only": 0.10, "only": {"expression_error_se": 0.005, "style_leakage": 8 / 128}},
        },
    }
    on = {n for n, v in expand_block_dict(layers, suggest_preset(result, blocks)).items() if v == 1.0}
    assert on == {n for n in layers if n.startswith(blocks[0].name + ".") and layers[n].is_cross_attention}


def test_probe_report_files(layers, tmp_path):
    import probe_layers

    blocks = attention_blocks(layers)
    row = {
        "expression_error": 0.1,
        "expression_error_se": 0.01,
        "style_leakage": 0.0,
        "identity_leakage": 0.0,
        "identity_similarity": 0.3,
    }
    result = probe_blocks(blocks, lambda scale: dict(row))
    probe_layers.write_report(result, suggest_preset(result, blocks), tmp_path / "probe", "cmd")
    text = (tmp_path / "probe.md").read_text()
    assert all(f"| {b.name} |" in text for b in blocks) and "Suggested `expression_layers` preset" in text
    assert (tmp_path / "probe.png").stat().st_size > 0 and (tmp_path / "probe.json").exists()
    with pytest.raises(SystemExit):
        probe_layers.parse_args(["--adapter", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        probe_layers.parse_args(["--resuggest", "--out", str(tmp_path / "no_probe")])

    # --resuggest: the same blocks from the saved names, the suggestion recomputed, the measuring command kept
    assert probe_layers.blocks_of(result["blocks"]) == blocks
    argv = ["--resuggest", "--out", str(tmp_path / "probe"), "--min_gain_se", "1"]
    again = probe_layers.main(probe_layers.parse_args(argv))
    assert again["suggested_preset"] == suggest_preset(result, blocks, 1.0)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["command"] == "cmd" and saved["suggested_by"].endswith("--min_gain_se 1")
    assert "(recomputed by `python training/probe_layers.py --resuggest" in (tmp_path / "probe.md").read_text()


def test_single_block_adapter_keeps_that_blocks_branch_and_every_other_weight(layers):
    import torch
    from tiny_models import tiny_adapter

    from emojidiff_pipeline.layer_probe import single_block_adapter

    unet = tiny_components()["unet"]
    adapter = tiny_adapter(unet, expression_layers="all")
    blocks = attention_blocks(layers, adapter.expression_layer_names)
    block = blocks[-1]
    single = single_block_adapter(adapter, block)
    assert single.expression_layer_names and all(n.startswith(block.name + ".") for n in single.expression_layer_names)
    assert single.identity_layer_names == adapter.identity_layer_names
    full = adapter.state_dict()
    for key, value in single.state_dict().items():
        assert torch.equal(value, full[key]), key
    assert len(single.state_dict()) < len(full)  # the other blocks' expression key/values are gone
    with pytest.raises(ValueError, match="no layer in"):
        single_block_adapter(single, blocks[0])


def test_probe_trains_single_block_adapters_resumably_on_one_shared_cache(tmp_path, monkeypatch):
    """probe_layers --train_steps: each block's cut-down adapter trains into its own folder on one cache; a finished
    block is not trained again; the report gains the *_trained columns."""
    import argparse

    import probe_layers
    import results
    from face_standins import make_arcface_standin
    from tiny_models import tiny_adapter, write_tiny_collection

    import emojidiff_pipeline.train.run as run_module
    from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
    from emojidiff_pipeline.train.run import FaceFrontEnd, Stage1Config, TrainingRun, TripletSource

    components = tiny_components()
    EmojiDiffPipeline(**components).save_pretrained(tmp_path / "base")
    make_arcface_standin(tmp_path / "arcface.onnx", seed=1)
    write_tiny_collection(tmp_path, num_identities=3, photos_per_identity=2)

    def tiny_run(collection, output_dir, seed, max_steps, batch_size):  # the recipe, on the tiny world
        return TrainingRun(
            pretrained_model=str(tmp_path / "base"),
            output_dir=str(output_dir),
            resolution=64,
            data=TripletSource(same_identity_from=str(Path(collection) / "train.jsonl"), seed=seed),
            face=FaceFrontEnd(recognizer=str(tmp_path / "arcface.onnx")),
            config=Stage1Config(max_steps=max_steps, batch_size=batch_size, checkpointing_steps=1),
        )

    monkeypatch.setattr(results, "synthetic_stage1_run", tiny_run)
    adapter = tiny_adapter(components["unet"], expression_layers="all")
    blocks = attention_blocks(unet_layers(components["unet"]), adapter.expression_layer_names)[:2]
    args = argparse.Namespace(
        train_work=str(tmp_path / "work"),
        collection=str(tmp_path),
        seed=0,
        train_steps=2,
        train_batch_size=2,
        train_learning_rate=1e-3,
        train_face_loss_weight=6.0,
    )
    trained = [probe_layers.train_single_block(adapter, b, args) for b in blocks]
    for folder, b in zip(trained, blocks):
        names = EmojiDiffAdapter.from_pretrained(folder).expression_layer_names
        assert names and all(n.startswith(b.name + ".") for n in names)
        assert (Path(folder).parent / "checkpoint-2").is_dir()
    assert len(list((tmp_path / "work" / "cache").glob("cache-*.safetensors"))) == 1  # encoded once, shared
    monkeypatch.setattr(run_module, "train_stage1_run", lambda run: pytest.fail("a finished block trained again"))
    assert probe_layers.train_single_block(adapter, blocks[0], args) == trained[0]

    row = {
        "expression_error": 0.1,
        "expression_error_se": 0.01,
        "style_leakage": 0.0,
        "identity_leakage": 0.0,
        "identity_similarity": 0.3,
    }
    result = probe_blocks(blocks, lambda scale: dict(row))
    result["train_steps"], result["trained"] = 2, {b.name: dict(row, expression_error=0.05) for b in blocks}
    probe_layers.write_report(result, suggest_preset(result, blocks), tmp_path / "probe", "cmd")
    text = (tmp_path / "probe.md").read_text()
    assert "gain_trained" in text and "trained 2 more steps" in text and "+0.0500" in text
