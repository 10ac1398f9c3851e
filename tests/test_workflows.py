"""Every SDXL task (img2img, inpaint, ControlNet single and multi) and SD1.5 on the one EmojiDiff mixin: scale 0
equals the diffusers parent, non-zero scales change the output, parent arguments reach the parent, from_pipe both
ways; known template keypoints."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from tiny_models import (
    random_identity,
    random_template,
    tiny_adapter,
    tiny_components,
    tiny_controlnet,
    tiny_sd15_components,
)

from emojidiff_pipeline import (
    EmojiDiffControlNetPipeline,
    EmojiDiffImg2ImgPipeline,
    EmojiDiffInpaintPipeline,
    EmojiDiffPipeline,
    EmojiDiffStableDiffusionPipeline,
)

INIT = PIL.Image.fromarray(random_template(3, 64))
MASK = PIL.Image.new("L", (64, 64), 0)
MASK.paste(255, (16, 16, 48, 48))
CONTROL = PIL.Image.fromarray(random_template(5, 64))
INPUTS = dict(identity_embeds=random_identity(), expression_image=random_template())


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", "a smiling face")
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def components(one_torch_thread):
    return tiny_components()


@pytest.fixture(scope="module")
def adapter(components):
    return tiny_adapter(components["unet"])


# (EmojiDiff class, diffusers parent, extra components, task arguments, a parent argument whose change must show)
TASKS = {
    "img2img": (EmojiDiffImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline, {}, dict(image=INIT, strength=0.8),
                dict(strength=1.0)),
    "inpaint": (EmojiDiffInpaintPipeline, StableDiffusionXLInpaintPipeline, {}, dict(image=INIT, mask_image=MASK),
                dict(mask_image=PIL.Image.new("L", (64, 64), 255))),
    "controlnet": (EmojiDiffControlNetPipeline, StableDiffusionXLControlNetPipeline, {"controlnet": "one"},
                   dict(image=CONTROL), dict(controlnet_conditioning_scale=0.2)),
    "multi-controlnet": (EmojiDiffControlNetPipeline, StableDiffusionXLControlNetPipeline, {"controlnet": "two"},
                         dict(image=[CONTROL, INIT], controlnet_conditioning_scale=[1.0, 0.5]),
                         dict(controlnet_conditioning_scale=[0.1, 0.5])),
}  # fmt: skip


def _extra(extra):
    if extra.get("controlnet") == "one":
        return {"controlnet": tiny_controlnet()}
    if extra.get("controlnet") == "two":
        return {"controlnet": [tiny_controlnet(0), tiny_controlnet(1)]}
    return {}


@pytest.mark.parametrize("task", list(TASKS))
def test_task_at_scale_zero_equals_parent_and_nonzero_changes(task, components, adapter):
    cls, parent_cls, extra, args, changed = TASKS[task]
    extra = _extra(extra)
    base = parent_cls(**components, **extra)
    pipe = cls(**components, **extra, emoji_adapter=adapter)
    reference = run(base, **args)
    off = run(pipe, identity_scale=0.0, expression_scale=0.0, **args, **INPUTS)
    assert off.shape == reference.shape == (1, 64, 64, 3)
    assert np.abs(off - reference).max() <= 1e-5
    on = run(pipe, **args, **INPUTS)
    assert np.abs(on - reference).max() > 1e-3
    assert np.abs(run(pipe, expression_scale=0.0, **args, **INPUTS) - on).max() > 1e-3
    # a parent argument reaches the parent: changing it changes the output, exactly as it does for the parent
    new = {**args, **changed}
    assert np.abs(run(pipe, **new, **INPUTS) - on).max() > 1e-3
    assert (
        np.abs(run(pipe, identity_scale=0.0, expression_scale=0.0, **new, **INPUTS) - run(base, **new)).max() <= 1e-5
    )


def test_sd15_at_scale_zero_equals_stable_diffusion_and_nonzero_changes(one_torch_thread):
    components = tiny_sd15_components()
    adapter = tiny_adapter(components["unet"])
    assert adapter.config.cross_attention_dim == 32 and adapter.expression_layer_names
    base = StableDiffusionPipeline(**components)
    pipe = EmojiDiffStableDiffusionPipeline(**components, emoji_adapter=adapter)
    reference = run(base)
    assert np.abs(run(pipe, identity_scale=0.0, expression_scale=0.0, **INPUTS) - reference).max() <= 1e-5
    on = run(pipe, **INPUTS)
    assert on.shape == (1, 64, 64, 3) and np.abs(on - reference).max() > 1e-3
    assert np.abs(run(pipe, expression_scale=0.0, **INPUTS) - on).max() > 1e-3
    with pytest.raises(TypeError, match=r"`prompt_2`"):  # SD1.5 has one text encoder: its parent does not take it
        run(pipe, prompt_2="x", **INPUTS)


def test_from_pipe_both_ways_shares_components(components, adapter):
    sdxl = StableDiffusionXLPipeline(**{k: v for k, v in components.items()})
    img2img = EmojiDiffImg2ImgPipeline.from_pipe(sdxl, emoji_adapter=adapter)
    inpaint = EmojiDiffInpaintPipeline.from_pipe(img2img)
    control = EmojiDiffControlNetPipeline.from_pipe(inpaint, controlnet=tiny_controlnet())
    t2i = EmojiDiffPipeline.from_pipe(control)
    for pipe in (img2img, inpaint, control, t2i):
        assert pipe.unet is sdxl.unet and pipe.vae is sdxl.vae and pipe.emoji_adapter is adapter
    back = StableDiffusionXLImg2ImgPipeline.from_pipe(img2img)
    assert back.unet is sdxl.unet and not hasattr(back, "emoji_adapter")
    # the plain pipelines keep their own output on the shared UNet that carries the EmojiDiff processors
    assert np.abs(run(back, image=INIT, strength=0.8) - run(img2img, image=INIT, strength=0.8)).max() <= 1e-5
    assert np.abs(run(sdxl) - run(t2i)).max() <= 1e-5
    out = run(control, image=CONTROL, **INPUTS)
    assert np.abs(out - run(StableDiffusionXLControlNetPipeline.from_pipe(control), image=CONTROL)).max() > 1e-3


def test_unknown_and_wrong_task_arguments_are_refused(components, adapter):
    img2img = EmojiDiffImg2ImgPipeline(**components, emoji_adapter=adapter)
    with pytest.raises(TypeError, match=r"`strenght`\. Did you mean `strength`\?"):
        run(img2img, image=INIT, strenght=0.5)
    with pytest.raises(TypeError, match=r"has no ControlNet, so it takes no `controlnet_conditioning_scale`"):
        run(img2img, image=INIT, controlnet_conditioning_scale=0.5)
    with pytest.raises(TypeError, match=r"EmojiDiffImg2ImgPipeline\.__call__\(\): too many positional"):
        img2img("a", "b", INIT, 0.5, *range(3, 41))  # 40 positional arguments
    # positional parent arguments bind as the parent binds them: (prompt, prompt_2, image, strength)
    by_position = img2img(
        "a smiling face",
        None,
        INIT,
        0.8,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **INPUTS,
    ).images
    assert np.abs(by_position - run(img2img, image=INIT, strength=0.8, **INPUTS)).max() <= 1e-6


def test_expression_mask_at_image_resolution_for_img2img(components, adapter):
    pipe = EmojiDiffImg2ImgPipeline(**components, emoji_adapter=adapter)
    args = dict(image=INIT, strength=0.8, **INPUTS)
    full = run(pipe, **args)
    no_expression = run(pipe, expression_scale=0.0, **args)
    assert np.abs(run(pipe, expression_mask=np.ones((64, 64)), **args) - full).max() <= 1e-5
    assert np.abs(run(pipe, expression_mask=np.zeros((64, 64)), **args) - no_expression).max() <= 1e-5
    with pytest.raises(ValueError, match=r"`expression_mask` has size 64x32 .* aspect ratios differ"):
        run(pipe, expression_mask=np.ones((64, 32)), **args)


# ------------------------------------------------------------------ known keypoints (issue 12, item 6)
KPS = np.array([[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [23.0, 44.0], [41.0, 44.0]], np.float32)


@pytest.mark.parametrize("geometry", ["eyes_nose", "arcface"])
def test_known_keypoints_crop_mask_encode_without_analyzer(components, geometry):
    if geometry == "arcface":
        pytest.importorskip("insightface")
    from emojidiff_pipeline.face_geometry import align_expression_face, expression_mask, masked_template

    adapter = tiny_adapter(components["unet"], template_crop=geometry)
    pipe = EmojiDiffPipeline(**components, emoji_adapter=adapter)
    template = random_template(7, 64)
    crop = align_expression_face(template, KPS, 224, geometry)
    by_hand = pipe.encode_template_crops([masked_template(PIL.Image.fromarray(crop), expression_mask(224, geometry))])
    tokens = pipe.encode_expression(template, kps=KPS)
    torch.testing.assert_close(tokens, by_hand)
    assert not torch.allclose(tokens, pipe.encode_expression(template))  # without kps: taken as an aligned crop
    two = pipe.encode_expression([template, template], kps=[KPS, None])
    torch.testing.assert_close(two[:1], by_hand)
    # the pipeline argument gives what precomputed embeddings give
    with_kps = run(pipe, identity_embeds=INPUTS["identity_embeds"], expression_image=template, expression_kps=KPS)
    precomputed = run(pipe, identity_embeds=INPUTS["identity_embeds"], expression_embeds=by_hand)
    assert np.abs(with_kps - precomputed).max() <= 1e-5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(expression_kps=KPS), r"`expression_kps` was given without `expression_image`"),
        (dict(expression_image=random_template(), expression_kps=np.zeros((4, 2))),
         r"`expression_kps` must be 5 landmarks"),
        (dict(expression_image=random_template(), expression_kps=[KPS, KPS]),
         r"holds 2 landmark sets but there are 1"),
        (dict(expression_image=random_template(), expression_kps=np.full((5, 2), np.nan)),
         r"`expression_kps` contains non-finite"),
    ],
    ids=["without image", "wrong shape", "count", "nan"],
)  # fmt: skip
def test_bad_keypoints_are_refused(components, adapter, kwargs, message):
    pipe = EmojiDiffPipeline(**components, emoji_adapter=adapter)
    with pytest.raises(ValueError, match=message):
        run(pipe, identity_embeds=INPUTS["identity_embeds"], **kwargs)


def test_replaced_processors_are_refused_not_ignored(adapter):
    pipe = EmojiDiffPipeline(**tiny_components(), emoji_adapter=adapter)
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())
    with pytest.raises(ValueError, match=r"no longer have EmojiDiff processors .* `pipe\.set_emoji_adapter"):
        run(pipe, **INPUTS)
    pipe.set_emoji_adapter(pipe.emoji_adapter)
    assert run(pipe, **INPUTS).shape == (1, 64, 64, 3)
