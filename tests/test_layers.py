"""Layer selection: presets, names, regexes, per-block dicts, and loud failures."""

import pytest
from tiny_models import tiny_components

from emojidiff_pipeline.layers import expand_layer_values, select_layers, unet_layers


@pytest.fixture(scope="module")
def layers():
    return unet_layers(tiny_components()["unet"])


def test_unet_layers_reads_sizes(layers):
    cross = [n for n, info in layers.items() if info.is_cross_attention]
    assert len(layers) == 24 and len(cross) == 12
    assert all(n.endswith("attn2.processor") for n in cross)
    info = layers["up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"]
    assert (info.hidden_size, info.cross_attention_dim) == (64, 64) and 64 % info.heads == 0


def test_presets(layers):
    assert len(select_layers(layers, "all")) == 12
    assert all(n.startswith("up_blocks.") for n in select_layers(layers, "up"))
    assert list(select_layers(layers, "mid")) == [
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
        "mid_block.attentions.0.transformer_blocks.1.attn2.processor",
    ]
    sensitive = select_layers(layers, "expression_sensitive")
    assert {n.split(".transformer_blocks")[0] for n in sensitive} == {
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.2",
    }
    assert select_layers(layers, "none") == {}


def test_names_regex_and_block_dict(layers):
    name = "down_blocks.1.attentions.0.transformer_blocks.1.attn2.processor"
    assert select_layers(layers, name) == {name: 64}
    assert select_layers(layers, name[: -len(".processor")]) == {name: 64}  # module name works too
    assert len(select_layers(layers, r"re:^up_blocks\.0\.attentions\.[01]\.")) == 4  # attn1 hits are dropped
    by_dict = select_layers(layers, {"up": {"block_0": [0.0, 1.0, 0.0]}})
    assert {n.split(".transformer_blocks")[0] for n in by_dict} == {"up_blocks.0.attentions.1"}
    assert len(select_layers(layers, {"down": 1.0, "mid": 1.0})) == 6
    # order follows the UNet, not the spec
    two = select_layers(layers, [list(select_layers(layers, "all"))[5], list(select_layers(layers, "all"))[1]])
    assert list(two) == [list(select_layers(layers, "all"))[1], list(select_layers(layers, "all"))[5]]


def test_scale_expansion(layers):
    targets = list(select_layers(layers, "up"))
    values = expand_layer_values(layers, targets, {"up": {"block_0": [0.0, 2.0, 0.0]}}, "expression_scale")
    assert sorted(set(values.values())) == [0.0, 2.0]
    assert expand_layer_values(layers, targets, 0.5, "s") == {n: 0.5 for n in targets}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("everything", r"`layers`='everything' is neither a preset"),
        ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor", "a self-attention layer"),
        ("down_blocks.9.attentions.0.transformer_blocks.0.attn2", "not an attention processor of this UNet"),
        (r"re:attn1", "matches only self-attention layers"),
        (r"re:^nothing", "matches no cross-attention layer"),
        ({"up": {"block_7": 1.0}}, r"up.block_7, which does not exist.*\['block_0'\]"),
        ({"up": {"block_0": [1.0, 0.0]}}, "gives 2 values for up.block_0, which has 3"),
        ({"sideways": 1.0}, r"unknown UNet path\(s\) \['sideways'\]"),
        ({"up": {"block_0": 0.0}}, "selects no cross-attention layer"),
        ({"up": {"block_0": "yes"}}, r"must hold numbers, got 'yes'"),
        ([], "must be a preset, names"),
    ],
)
def test_bad_specs_raise_and_echo(layers, spec, message):
    with pytest.raises(ValueError, match=message):
        select_layers(layers, spec)
