"""EmojiDiffPipeline on tiny SDXL components: invariants, batching, guidance layout, drop-in behaviour."""

import logging

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
from tiny_models import random_identity, random_template, tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffAttnProcessor, EmojiDiffPipeline
from emojidiff_pipeline.attention import EmojiDiffPassthroughProcessor


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", "a smiling face")
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def components():
    return tiny_components()


@pytest.fixture(scope="module")
def pipe(components):
    adapter = tiny_adapter(components["unet"])
    return EmojiDiffPipeline(**components, emoji_adapter=adapter)


@pytest.fixture(scope="module")
def base_pipe(components):
    return StableDiffusionXLPipeline(**components)


@pytest.mark.parametrize("scheduler_cls", [EulerDiscreteScheduler, DPMSolverMultistepScheduler, DDIMScheduler])
def test_zero_scales_equal_sdxl_and_nonzero_changes(pipe, base_pipe, scheduler_cls):
    scheduler = scheduler_cls.from_config(base_pipe.scheduler.config)
    pipe.scheduler = scheduler
    base_pipe.scheduler = scheduler
    try:
        inputs = dict(identity_embeds=random_identity(), expression_image=random_template())
        base = run(base_pipe)
        off = run(pipe, identity_scale=0.0, expression_scale=0.0, **inputs)
        on = run(pipe, **inputs)
        id_only = run(pipe, expression_scale=0.0, **inputs)
    finally:
        pipe.scheduler = base_pipe.scheduler = EulerDiscreteScheduler.from_config(scheduler.config)
    assert off.shape == base.shape == (1, 64, 64, 3)
    assert np.abs(off - base).max() <= 1e-5
    assert np.abs(on - base).max() > 1e-3
    assert np.abs(on - id_only).max() > 1e-3


def test_no_adapter_inputs_equals_sdxl(pipe, base_pipe):
    assert np.abs(run(pipe) - run(base_pipe)).max() <= 1e-5


def test_expression_branch_reaches_only_its_layers(pipe, monkeypatch):
    calls = []
    original_sdpa = torch.nn.functional.scaled_dot_product_attention
    original_call = EmojiDiffAttnProcessor.__call__
    current = {}

    def spy_sdpa(query, key, value, *args, **kwargs):
        if current:
            calls.append((current["layer"], key.shape[2]))
        return original_sdpa(query, key, value, *args, **kwargs)

    def spy_call(self, attn, hidden_states, *args, emojidiff=None, **kwargs):
        current["layer"] = self.layer_name
        try:
            return original_call(self, attn, hidden_states, *args, emojidiff=emojidiff, **kwargs)
        finally:
            current.clear()

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(EmojiDiffAttnProcessor, "__call__", spy_call)
    run(pipe, identity_scale=0.0, expression_image=random_template(), identity_embeds=random_identity())
    adapter_calls = {(layer, n) for layer, n in calls if n != 77}  # 77 = text tokens
    n_exp = pipe.emoji_adapter.config.num_expression_tokens
    expression_layers = set(pipe.emoji_adapter.expression_layer_names)
    assert adapter_calls == {(layer, n_exp) for layer in expression_layers}
    assert expression_layers < set(pipe.emoji_adapter.identity_layer_names)


def test_processors_cover_every_layer_and_unload_restores():
    components = tiny_components()  # own UNet: unloading changes its processors
    adapter = tiny_adapter(components["unet"])
    pipe = EmojiDiffPipeline(**components, emoji_adapter=adapter)
    procs = pipe.unet.attn_processors
    adapted = set(adapter.identity_layer_names) | set(adapter.expression_layer_names)
    assert {n for n, p in procs.items() if isinstance(p, EmojiDiffAttnProcessor)} == adapted
    assert all(isinstance(p, EmojiDiffPassthroughProcessor) for n, p in procs.items() if n not in adapted)
    pipe.unload_emoji_adapter()
    assert pipe.emoji_adapter is None
    assert not any(
        isinstance(p, (EmojiDiffAttnProcessor, EmojiDiffPassthroughProcessor))
        for p in pipe.unet.attn_processors.values()
    )


def test_batch_of_one_matches_batch_of_two(pipe):
    ids = random_identity(batch=2, seed=3)
    templates = [random_template(1), random_template(2)]
    two = pipe(
        prompt=["a face", "a cat face"],
        identity_embeds=ids,
        expression_image=templates,
        num_inference_steps=2,
        output_type="np",
        generator=[torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)],
    ).images
    for i, prompt in enumerate(["a face", "a cat face"]):
        one = run(pipe, seed=10 + i, prompt=prompt, identity_embeds=ids[i : i + 1], expression_image=templates[i])
        assert np.abs(one[0] - two[i]).max() <= 1e-4
    assert np.abs(two[0] - two[1]).max() > 1e-3


def test_num_images_per_prompt_follows_prompt_order(pipe):
    ids = random_identity(batch=2, seed=5)
    seeds = [20, 21, 22, 23]
    out = pipe(
        prompt=["a face", "a cat face"],
        identity_embeds=ids,
        expression_image=random_template(4),
        num_images_per_prompt=2,
        num_inference_steps=2,
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    ).images
    assert out.shape[0] == 4
    # images 2 and 3 belong to prompt 1 / identity 1
    single = run(
        pipe, seed=seeds[3], prompt="a cat face", identity_embeds=ids[1:], expression_image=random_template(4)
    )
    assert np.abs(single[0] - out[3]).max() <= 1e-4


def test_guidance_batch_layout_uses_null_tokens_for_negative_half(pipe):
    adapter = pipe.emoji_adapter
    ids = random_identity(batch=2, seed=7)
    exp = torch.randn(2, 17, adapter.config.image_embed_dim, generator=torch.Generator().manual_seed(0))
    cond = pipe.prepare_conditioning(2, 1, True, ids, exp, 1.0, 0.5, None, torch.device("cpu"))
    name = adapter.expression_layer_names[0]  # a layer with both branches
    cache = cond.layers[name]
    assert cache.identity_key.shape[0] == cache.expression_key.shape[0] == 4
    heads = cache.identity_key.shape[1]

    def heads_view(x):
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    key = name.replace(".", "__")
    with torch.no_grad():
        null_id = heads_view(adapter.identity_kv[key]["to_k"](adapter.identity_null_tokens[None]))
        gate = adapter.expression_gates[key]  # values carry the layer's gate
        null_exp_v = heads_view(adapter.expression_kv[key]["to_v"](adapter.expression_null_tokens[None]) * gate)
        out = adapter(ids, exp)
    for i in range(2):  # negative half: null tokens for both branches
        torch.testing.assert_close(cache.identity_key[i], null_id[0])
        torch.testing.assert_close(cache.expression_value[i], 0.5 * null_exp_v[0])  # scale folded into values
    torch.testing.assert_close(cache.identity_key[2:], heads_view(out.identity_kv[name][0]))
    torch.testing.assert_close(cache.expression_value[2:], 0.5 * heads_view(out.expression_kv[name][1]))
    # without guidance the batch is not doubled; prompt-major with num_images_per_prompt copies
    plain = pipe.prepare_conditioning(2, 3, False, ids, exp, 1.0, 1.0, None, "cpu").layers[name]
    assert plain.identity_key.shape[0] == 6
    torch.testing.assert_close(plain.identity_key[3:], heads_view(out.identity_kv[name][0])[1:].expand(3, -1, -1, -1))


def test_per_block_scale_dict_and_expression_mask(pipe):
    inputs = dict(identity_embeds=random_identity(), expression_image=random_template())
    full = run(pipe, **inputs)
    # a per-block dict that zeroes every expression layer equals expression_scale=0
    zero_dict = run(pipe, expression_scale={"up": {"block_0": 0.0}}, **inputs)
    assert np.abs(zero_dict - run(pipe, expression_scale=0.0, **inputs)).max() <= 1e-6
    # an all-zero mask removes the expression term; a full mask keeps it
    mask_zero = run(pipe, expression_mask=np.zeros((64, 64), np.float32), **inputs)
    mask_one = run(pipe, expression_mask=np.ones((64, 64), np.float32), **inputs)
    assert np.abs(mask_one - full).max() <= 1e-5
    assert np.abs(mask_zero - zero_dict).max() <= 1e-5


def test_parent_features_keep_working(pipe):
    inputs = dict(identity_embeds=random_identity(), expression_image=random_template())
    steps = []

    def callback(p, i, t, kwargs):
        steps.append(i)
        return kwargs

    out = run(pipe, negative_prompt="blurry", callback_on_step_end=callback, output_type="pt", **inputs)
    assert steps == [0, 1] and isinstance(out, torch.Tensor) and out.shape == (1, 3, 64, 64)
    pil = run(pipe, output_type="pil", **inputs)
    assert pil[0].size == (64, 64)
    latent = run(pipe, output_type="latent", **inputs)
    assert latent.shape == (1, 4, 32, 32)
    prompt_embeds, neg, pooled, neg_pooled = pipe.encode_prompt("a smiling face", device="cpu")
    by_embeds = run(
        pipe,
        prompt=None,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=neg,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=neg_pooled,
        **inputs,
    )
    assert np.abs(by_embeds - run(pipe, **inputs)).max() <= 1e-5


def test_no_unexpected_kwarg_warnings(pipe):
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        run(pipe, identity_embeds=random_identity(), expression_image=random_template())
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "not expected" in r]


def test_cpu_offload(components):
    pytest.importorskip("accelerate")
    pipe = EmojiDiffPipeline(**tiny_components(), emoji_adapter=tiny_adapter(components["unet"]))
    inputs = dict(identity_embeds=random_identity(), expression_image=random_template())
    expected = run(pipe, **inputs)
    pipe.enable_model_cpu_offload(device="cpu")
    assert np.abs(run(pipe, **inputs) - expected).max() <= 1e-5


def test_from_pipe_shares_components(base_pipe, components):
    adapter = tiny_adapter(components["unet"])
    pipe = EmojiDiffPipeline.from_pipe(
        base_pipe,
        emoji_adapter=adapter,
        image_encoder=components["image_encoder"],
        feature_extractor=components["feature_extractor"],
    )
    assert pipe.unet is base_pipe.unet and pipe.vae is base_pipe.vae and pipe.text_encoder is base_pipe.text_encoder
    assert pipe.emoji_adapter is adapter
    out = run(pipe, identity_embeds=random_identity(), expression_image=random_template())
    assert out.shape == (1, 64, 64, 3)
    # the original SDXL pipeline still gives its own output on the shared UNet
    assert np.abs(run(base_pipe) - run(pipe)).max() <= 1e-5


def test_pipeline_save_load_round_trip(pipe, tmp_path):
    inputs = dict(identity_embeds=random_identity(), expression_image=random_template())
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = EmojiDiffPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.emoji_adapter, EmojiDiffAdapter)
    assert np.abs(run(loaded, **inputs) - run(pipe, **inputs)).max() <= 1e-5  # float reassociation only
    # a plain SDXL folder loads too, with no adapter
    StableDiffusionXLPipeline(**{k: getattr(pipe, k) for k in tiny_components()}).save_pretrained(tmp_path / "sdxl")
    plain = EmojiDiffPipeline.from_pretrained(tmp_path / "sdxl")
    assert plain.emoji_adapter is None


def test_lora_load_generate_unload(components, tmp_path):
    peft = pytest.importorskip("peft")
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    lora_source = tiny_components()["unet"]
    lora_source.add_adapter(
        peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k"])
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(lora_source))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=layers, safe_serialization=True)

    pipe = EmojiDiffPipeline(**tiny_components(), emoji_adapter=tiny_adapter(components["unet"]))
    inputs = dict(identity_embeds=random_identity(), expression_image=random_template())
    before = run(pipe, **inputs)
    pipe.load_lora_weights(tmp_path)
    with_lora = run(pipe, **inputs)
    assert np.abs(with_lora - before).max() > 1e-3
    pipe.unload_lora_weights()
    assert np.abs(run(pipe, **inputs) - before).max() <= 1e-5
