"""Separate expression guidance (emojidiff_pipeline.guidance) on tiny SDXL components."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from tiny_models import random_identity, random_template, tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffImg2ImgPipeline, EmojiDiffPipeline


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", "a smiling face")
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(**kwargs).images


@pytest.fixture(scope="module")
def pipe():
    components = tiny_components()
    return EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))


def inputs(template_seed=0, batch=1):
    return dict(
        identity_embeds=random_identity(batch=batch),
        expression_image=[random_template(seed=template_seed + i) for i in range(batch)],
    )


def test_equal_scales_are_ordinary_guidance_and_zero_ignores_the_template(pipe):
    plain = run(pipe, guidance_scale=5.0, **inputs())
    same = run(pipe, guidance_scale=5.0, expression_guidance_scale=5.0, **inputs())
    assert np.abs(same - plain).max() <= 1e-5
    pushed = run(pipe, guidance_scale=5.0, expression_guidance_scale=12.0, **inputs())
    assert np.abs(pushed - plain).max() > 1e-3
    # g_e = 0: eps_u + g (eps_x - eps_u), the expression branch on null tokens only, whatever the template
    zero_a = run(pipe, guidance_scale=5.0, expression_guidance_scale=0.0, **inputs(0))
    zero_b = run(pipe, guidance_scale=5.0, expression_guidance_scale=0.0, **inputs(5))
    assert np.abs(zero_a - zero_b).max() <= 1e-5
    assert np.abs(run(pipe, guidance_scale=5.0, **inputs(5)) - plain).max() > 1e-3  # templates do differ


def test_batches_and_images_per_prompt_keep_their_rows(pipe):
    kwargs = dict(prompt=["a face", "a portrait"], num_images_per_prompt=2, guidance_scale=4.0, **inputs(batch=2))
    plain = run(pipe, **kwargs)
    assert plain.shape[0] == 4
    assert np.abs(run(pipe, expression_guidance_scale=4.0, **kwargs) - plain).max() <= 1e-5

    def generators(seeds):  # one per image, so an image's noise does not depend on the batch around it
        return [torch.Generator().manual_seed(s) for s in seeds]

    pushed = run(pipe, expression_guidance_scale=9.0, **{**kwargs, "generator": generators([0, 1, 2, 3])})
    single = run(
        pipe,
        prompt="a portrait",
        num_images_per_prompt=2,
        guidance_scale=4.0,
        expression_guidance_scale=9.0,
        identity_embeds=random_identity(batch=2)[1:],
        expression_image=random_template(seed=1),
        generator=generators([2, 3]),
    )
    assert np.abs(pushed[2:] - single).max() <= 1e-4  # the second prompt's images, alone or in the batch


def test_img2img_takes_expression_guidance():
    components = tiny_components()
    pipe = EmojiDiffImg2ImgPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))
    init = np.random.default_rng(0).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    kwargs = dict(image=init, strength=0.8, num_inference_steps=3, guidance_scale=5.0, **inputs())
    assert np.abs(run(pipe, expression_guidance_scale=5.0, **kwargs) - run(pipe, **kwargs)).max() <= 1e-5
    assert np.abs(run(pipe, expression_guidance_scale=15.0, **kwargs) - run(pipe, **kwargs)).max() > 1e-3
    assert isinstance(pipe, StableDiffusionXLImg2ImgPipeline)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(expression_guidance_scale=-1.0, guidance_scale=5.0), "must be a finite number >= 0"),
        (dict(expression_guidance_scale=float("nan"), guidance_scale=5.0), "must be a finite number >= 0"),
        (dict(expression_guidance_scale=3.0, guidance_scale=1.0), "needs classifier-free guidance"),
    ],
)
def test_bad_expression_guidance_is_refused(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(pipe, **kwargs, **inputs())


def test_expression_guidance_without_a_template_is_refused(pipe):
    with pytest.raises(ValueError, match="without an expression input"):
        run(pipe, guidance_scale=5.0, expression_guidance_scale=7.0, identity_embeds=random_identity())
