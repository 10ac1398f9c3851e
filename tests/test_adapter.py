"""EmojiDiffAdapter: construction from a UNet, save/load, UNet checks, real SDXL config sizes."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from tiny_models import random_identity, tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffAdapter
from emojidiff_pipeline.layers import select_layers

REFERENCE = Path(__file__).resolve().parent / "data"  # copies of ../shared/reference/


@pytest.fixture(scope="module")
def unet():
    return tiny_components()["unet"]


def test_from_unet_copies_frozen_key_values(unet):
    adapter = EmojiDiffAdapter.from_unet(
        unet, image_embed_dim=32, resampler_dim=32, resampler_heads=4, resampler_depth=1
    )
    name = adapter.identity_layer_names[0]
    attn = unet.get_submodule(name[: -len(".processor")])
    module = adapter.identity_kv[name.replace(".", "__")]
    assert torch.equal(module["to_k"].weight, attn.to_k.weight)
    assert torch.equal(module["to_v"].weight, attn.to_v.weight)
    assert module["to_k"].weight.data_ptr() != attn.to_k.weight.data_ptr()  # a copy, not the frozen tensor
    assert set(adapter.identity_layer_names) == set(select_layers(unet, "all"))
    assert torch.count_nonzero(adapter.identity_null_tokens) == 0


def test_save_load_round_trip_is_bit_exact(unet, tmp_path):
    adapter = tiny_adapter(unet)
    adapter.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    loaded = EmojiDiffAdapter.from_pretrained(tmp_path / "adapter")
    a, b = adapter.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["expression_layers"] == adapter.config.expression_layers
    # weights are keyed by layer name, not by position
    keys = load_file(tmp_path / "adapter" / "diffusion_pytorch_model.safetensors").keys()
    assert "identity_kv.up_blocks__0__attentions__1__transformer_blocks__0__attn2__processor.to_k.weight" in keys
    ids = random_identity(2)
    out_a, out_b = adapter(ids), loaded(ids)
    assert torch.equal(out_a.identity_tokens, out_b.identity_tokens)


def test_from_pretrained_subfolder(unet, tmp_path):
    tiny_adapter(unet).save_pretrained(tmp_path / "repo" / "emoji_adapter")
    loaded = EmojiDiffAdapter.from_pretrained(tmp_path / "repo", subfolder="emoji_adapter")
    loaded.check_unet(unet)


def test_several_references_are_order_invariant(unet):
    adapter = tiny_adapter(unet)
    ids = random_identity(1, n_ref=3)
    a = adapter(ids).identity_tokens
    b = adapter(ids.flip(1)).identity_tokens
    torch.testing.assert_close(a, b)


def test_null_tokens_replace_dropped_rows(unet):
    adapter = tiny_adapter(unet)
    ids = random_identity(3)
    out = adapter(ids, identity_keep=torch.tensor([True, False, True]))
    torch.testing.assert_close(out.identity_tokens[1], adapter.identity_null_tokens)
    torch.testing.assert_close(out.identity_tokens[0], adapter(ids[:1]).identity_tokens[0])


def test_adapter_gradients_reach_only_adapter(unet):
    adapter = tiny_adapter(unet)
    out = adapter(random_identity(2), torch.randn(2, 17, 32))
    loss = sum(k.square().mean() + v.square().mean() for k, v in out.expression_kv.values())
    loss.backward()
    assert adapter.expression_resampler.latents.grad is not None
    assert all(p.grad is None for p in unet.parameters())


def test_adapter_on_real_sdxl_config_default_presets():
    accelerate = pytest.importorskip("accelerate")
    config = json.loads((REFERENCE / "sdxl_base_1.0_unet_config.json").read_text())
    names = (REFERENCE / "sdxl_base_1.0_attn_processor_names.txt").read_text().split()
    with accelerate.init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
        adapter = EmojiDiffAdapter.from_unet(unet)
    assert list(unet.attn_processors) == names
    assert len(adapter.identity_layer_names) == 70  # every cross-attention layer
    # the expression-sensitive preset: up_blocks.0 attentions 0 and 2 (10 deep) + up_blocks.1 (3 x 2)
    assert len(adapter.expression_layer_names) == 26
    assert not any(n.startswith("up_blocks.0.attentions.1.") for n in adapter.expression_layer_names)
    assert all(n.startswith("up_blocks.") for n in adapter.expression_layer_names)
    kv = sum(p.numel() for n, p in adapter.named_parameters() if n.startswith(("identity_kv.", "expression_kv.")))
    # every to_k/to_v maps 2048 -> hidden size: 1280 in up_blocks.0 / mid / down_blocks.2, 640 elsewhere
    expected_kv = sum(2 * 2048 * s for s in adapter.config.identity_layers.values()) + sum(
        2 * 2048 * s for s in adapter.config.expression_layers.values()
    )
    assert kv == expected_kv
    total = sum(p.numel() for p in adapter.parameters())
    print(f"EmojiDiffAdapter on SDXL (default presets): {total / 1e6:.1f} M parameters ({kv / 1e6:.1f} M key/value)")
    assert 300e6 < total < 700e6


def test_adapter_refuses_another_unet(unet):
    adapter = tiny_adapter(unet)
    other = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        cross_attention_dim=64,
        norm_num_groups=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    with pytest.raises(ValueError, match=r"built for another UNet: .*layer '.*attn2.processor'"):
        adapter.check_unet(other)
    wider = tiny_components()["unet"]
    wider.register_to_config()  # same names, patch one layer's size to differ
    name = adapter.identity_layer_names[0]
    attn = wider.get_submodule(name[: -len(".processor")])
    attn.to_k = torch.nn.Linear(64, 16, bias=False)
    with pytest.raises(ValueError, match=f"{name}.*hidden size 64.*but 16"):
        adapter.check_unet(wider)


def test_adapter_on_real_sd15_config():
    accelerate = pytest.importorskip("accelerate")
    config = json.loads((REFERENCE / "sd_1.5_unet_config.json").read_text())
    with accelerate.init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
        adapter = EmojiDiffAdapter.from_unet(unet)
    assert list(unet.attn_processors) == (REFERENCE / "sd_1.5_attn_processor_names.txt").read_text().split()
    assert len(adapter.identity_layer_names) == 16 and adapter.config.cross_attention_dim == 768
    # SD1.5's first up block with attention is up_blocks.1; its second attention module is left out
    assert len(adapter.expression_layer_names) == 8
    assert not any(n.startswith("up_blocks.1.attentions.1.") for n in adapter.expression_layer_names)
