"""The layer probe (layer_probe.py, training/probe_layers.py): blocks, per-block scale dicts, the probe's table."""

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
