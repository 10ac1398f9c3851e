"""Wrong inputs: each raises an error that names the argument and what was received. Plus the face path end to end."""

import numpy as np
import pytest
import torch
from face_standins import ASTRONAUT_KPS, write_model_pack
from tiny_models import random_identity, random_template, tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
from emojidiff_pipeline.face import FaceAnalyzer


@pytest.fixture(scope="module")
def pipe():
    components = tiny_components()
    return EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))


@pytest.fixture(scope="module")
def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    write_model_pack(root, "tinypack", faces=[{"kps": ASTRONAUT_KPS}], image_size=(512, 512))
    return FaceAnalyzer("tinypack", root=root)


def call(pipe, **kwargs):
    kwargs.setdefault("prompt", "a face")
    kwargs.setdefault("num_inference_steps", 1)
    kwargs.setdefault("output_type", "latent")
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs)


ID, TPL = random_identity(), random_template()

# (case id, keyword arguments, error type, regex the message must match)
PIPELINE_CASES = [
    ("embed width", dict(identity_embeds=torch.randn(1, 1, 256)), ValueError, r"`identity_embeds` has width 256.*512"),
    ("embed ndim", dict(identity_embeds=torch.randn(1, 512)), ValueError,
     r"`identity_embeds` must have 3 dims.*\(1, 512\)"),
    ("embed type", dict(identity_embeds=[0.1] * 512), ValueError,
     r"`identity_embeds` must be a torch.Tensor, got list"),
    ("embed batch", dict(prompt=["a", "b"], identity_embeds=random_identity(3)), ValueError,
     r"`identity_embeds` has batch 3.*2 prompts"),
    ("template list length", dict(prompt=["a", "b", "c"], expression_image=[TPL, TPL]), ValueError,
     r"`expression_image` holds 2 templates.*3 prompts"),
    ("template type", dict(expression_image="smile.png"), ValueError, r"`expression_image` must be an image.*got str"),
    ("template dtype", dict(expression_image=TPL.astype(np.float32)), ValueError,
     r"`expression_image` must be RGB uint8.*float32"),
    ("expression embeds width", dict(expression_embeds=torch.randn(1, 17, 99)), ValueError,
     r"`expression_embeds` has width 99.*32"),
    ("negative scale", dict(identity_embeds=ID, identity_scale=-0.5), ValueError,
     r"`identity_scale` must be >= 0, got -0.5"),
    ("non-numeric scale", dict(identity_embeds=ID, expression_scale="strong"), ValueError,
     r"`expression_scale` must be a number.*'strong' \(str\)"),
    ("scale dict bad block", dict(expression_scale={"up": {"block_3": 1.0}}), ValueError,
     r"`expression_scale` names up.block_3, which does not exist"),
    ("scale dict bad path", dict(identity_scale={"middle": 1.0}), ValueError,
     r"`identity_scale` names unknown UNet path\(s\) \['middle'\]"),
    ("identity image without analyzer", dict(identity_image=TPL), ValueError,
     r"`identity_image` needs a face analyzer.*identity_embeds="),
    ("both identity inputs", dict(identity_image=TPL, identity_embeds=ID), ValueError,
     r"either `identity_image` or `identity_embeds`"),
    ("mask shape", dict(expression_image=TPL, expression_mask=np.ones((2, 8, 8))), ValueError,
     r"`expression_mask` must be a 2-D.*\(2, 8, 8\)"),
    ("mask range", dict(expression_image=TPL, expression_mask=np.full((8, 8), 3.0)), ValueError,
     r"`expression_mask` values must lie in \[0, 1\], got \[3"),
    ("images per prompt", dict(identity_embeds=ID, num_images_per_prompt=0), ValueError,
     r"`num_images_per_prompt` must be a positive int, got 0"),
    ("reserved kwarg", dict(cross_attention_kwargs={"emojidiff": 1}), ValueError,
     r"`cross_attention_kwargs` must not hold the reserved key 'emojidiff'"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, error, message", [c[1:] for c in PIPELINE_CASES], ids=[c[0] for c in PIPELINE_CASES])
def test_wrong_pipeline_inputs(pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        call(pipe, **kwargs)


def test_adapter_for_another_unet_is_refused():
    components = tiny_components()
    adapter = EmojiDiffAdapter(
        cross_attention_dim=64,
        identity_layers={"up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor": 32},
        expression_layers={},
        image_embed_dim=32,
        resampler_dim=32,
        resampler_heads=4,
        resampler_depth=1,
    )
    with pytest.raises(
        ValueError, match=r"built for another UNet: identity layer 'up_blocks.0.attentions.0.*hidden size 32"
    ):
        EmojiDiffPipeline(**components, emoji_adapter=adapter)


def test_corrupt_safetensors_names_the_path(tmp_path):
    tiny_adapter(tiny_components()["unet"]).save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(OSError, match=r"`pretrained_model_name_or_path`=.*corrupt or truncated"):
        EmojiDiffAdapter.from_pretrained(tmp_path)


def test_missing_adapter_folder(tmp_path):
    with pytest.raises(OSError, match=r"`pretrained_model_name_or_path`=.*nowhere"):
        EmojiDiffAdapter.from_pretrained(tmp_path / "nowhere")


def test_missing_model_pack(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"antelopev2"):
        FaceAnalyzer("antelopev2", root=tmp_path)
    assert not (tmp_path / "models" / "antelopev2").exists()


def test_adapter_inputs_without_adapter():
    plain = EmojiDiffPipeline(**tiny_components())
    with pytest.raises(ValueError, match="no `emoji_adapter`"):
        call(plain, identity_embeds=ID)


def test_face_path_end_to_end(pipe, analyzer, astronaut):
    pipe.set_face_analyzer(analyzer)
    try:
        by_image = call(pipe, identity_image=astronaut, expression_image=astronaut, output_type="np").images
        emb = torch.as_tensor(analyzer.identity_embedding(astronaut))[None, None]
        by_embeds = call(pipe, identity_embeds=emb, expression_image=astronaut, output_type="np").images
        assert np.abs(by_image - by_embeds).max() <= 1e-6
        # several references of one person, and per-prompt lists
        several = call(pipe, identity_image=[astronaut, astronaut], expression_image=astronaut, output_type="np")
        assert np.abs(several.images - by_image).max() <= 1e-5  # same photo twice = same identity
        per_prompt = call(
            pipe, prompt=["a", "b"], identity_image=[[astronaut], [astronaut]], expression_image=astronaut
        )
        assert per_prompt.images.shape[0] == 2
        with pytest.raises(ValueError, match=r"`identity_image` holds 3 per-prompt reference lists.*2 prompts"):
            call(pipe, prompt=["a", "b"], identity_image=[[astronaut]] * 3)
        blank = np.full((512, 512, 3), 200, np.uint8)
        no_face = FaceAnalyzer.from_models(lambda image: [], recognizer=None)
        pipe.set_face_analyzer(no_face)
        with pytest.raises(ValueError, match=r"No face found in `expression_image`"):
            call(pipe, expression_image=blank)
    finally:
        pipe.set_face_analyzer(None)


def test_face_analyzer_type_is_checked(pipe):
    with pytest.raises(TypeError, match="`face_analyzer` must provide"):
        pipe.set_face_analyzer(object())
