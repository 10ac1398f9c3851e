"""The user-facing examples run end to end on tiny local folders."""

import importlib.util
from pathlib import Path

import numpy as np
import PIL.Image
from tiny_models import random_identity, random_template, tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffPipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_drop_in_example(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    components = tiny_components()
    sdxl = {k: v for k, v in components.items() if k not in ("image_encoder", "feature_extractor")}
    StableDiffusionXLPipeline(**sdxl).save_pretrained(tmp_path / "sdxl")
    tiny_adapter(components["unet"]).save_pretrained(tmp_path / "adapter")
    components["image_encoder"].save_pretrained(tmp_path / "clip")
    components["feature_extractor"].save_pretrained(tmp_path / "clip")
    np.save(tmp_path / "me.npy", random_identity(1, 2).numpy()[0])
    PIL.Image.fromarray(random_template()).save(tmp_path / "grin.png")
    out = tmp_path / "out.png"
    models = ["--sdxl", str(tmp_path / "sdxl"), "--adapter", str(tmp_path / "adapter")]
    models += ["--image_encoder", str(tmp_path / "clip")]
    inputs = ["--identity_embeds", str(tmp_path / "me.npy"), "--expression", str(tmp_path / "grin.png")]
    images = load_example("drop_in").main([*models, *inputs, "--steps", "2", "--output", str(out)])
    assert out.exists() and images[0].size == (64, 64)


def test_pipeline_folder_loads_like_a_hub_model(tmp_path):
    components = tiny_components()
    EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"])).save_pretrained(tmp_path)
    index = (tmp_path / "model_index.json").read_text()
    assert '"emojidiff_pipeline.adapter"' in index and '"EmojiDiffAdapter"' in index
    pipe = EmojiDiffPipeline.from_pretrained(tmp_path)
    image = pipe(
        "a face", identity_embeds=random_identity(), expression_image=random_template(), num_inference_steps=1
    ).images[0]
    assert image.size == (64, 64)
