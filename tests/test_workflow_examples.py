"""Each workflow's example script (img2img, inpaint, ControlNet single and multi, SD1.5, with IP-Adapter, from the
Hub) runs end to end on tiny local folders."""

import importlib.util
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from tiny_models import (
    random_identity,
    random_template,
    tiny_adapter,
    tiny_components,
    tiny_controlnet,
    tiny_sd15_components,
    write_tiny_ip_adapter,
)

from emojidiff_pipeline import EmojiDiffPipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("workflows")
    components = tiny_components()
    EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"])).save_pretrained(root / "model")
    StableDiffusionXLPipeline(
        **{k: v for k, v in components.items() if k not in ("image_encoder", "feature_extractor")}
    ).save_pretrained(root / "sdxl")
    components["image_encoder"].save_pretrained(root / "clip")
    components["feature_extractor"].save_pretrained(root / "clip")
    tiny_controlnet(0).save_pretrained(root / "cn0")
    tiny_controlnet(1).save_pretrained(root / "cn1")
    sd15 = tiny_sd15_components()
    tiny_adapter(sd15["unet"]).save_pretrained(root / "sd15_adapter")
    StableDiffusionPipeline(**{k: v for k, v in sd15.items() if k != "image_encoder"}).save_pretrained(root / "sd15")
    write_tiny_ip_adapter(root / "ip", components["unet"])
    np.save(root / "me.npy", random_identity(1, 2).numpy()[0])
    np.save(root / "kps.npy", np.array([[14, 18], [34, 18], [24, 26], [17, 34], [31, 34]], np.float32))
    for name, seed in (("grin", 0), ("init", 1), ("edges", 2), ("style", 3)):
        PIL.Image.fromarray(random_template(seed, 64)).save(root / f"{name}.png")
    mask = PIL.Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(root / "mask.png")
    return root


def common(root, output):
    inputs = ["--identity_embeds", str(root / "me.npy"), "--expression", str(root / "grin.png")]
    return [*inputs, "--steps", "2", "--output", str(root / output)]


@pytest.mark.parametrize(
    "example, args",
    [
        ("img2img", lambda r: ["--model", str(r / "model"), "--init", str(r / "init.png"), "--strength", "1.0",
                               "--expression_kps", str(r / "kps.npy")]),
        ("inpaint", lambda r: ["--model", str(r / "model"), "--image", str(r / "init.png"), "--mask",
                               str(r / "mask.png"), "--expression_mask", str(r / "mask.png")]),
        ("controlnet", lambda r: ["--model", str(r / "model"), "--controlnet", str(r / "cn0"), "--control_image",
                                  str(r / "edges.png")]),
        ("controlnet", lambda r: ["--model", str(r / "model"), "--controlnet", str(r / "cn0"), str(r / "cn1"),
                                  "--control_image", str(r / "edges.png"), str(r / "init.png"),
                                  "--scale", "1.0", "0.5"]),
        ("sd15", lambda r: ["--sd15", str(r / "sd15"), "--adapter", str(r / "sd15_adapter"), "--image_encoder",
                            str(r / "clip")]),
        ("with_ip_adapter", lambda r: ["--model", str(r / "model"), "--ip_adapter", str(r / "ip"), "--weight_name",
                                       "ip_adapter.safetensors", "--style", str(r / "style.png")]),
        ("from_hub", lambda r: ["--model", str(r / "model")]),
        ("from_hub", lambda r: ["--sdxl", str(r / "sdxl"), "--adapter", str(r / "model"), "--subfolder",
                                "emoji_adapter", "--image_encoder", str(r / "clip")]),
    ],
    ids=["img2img", "inpaint", "controlnet", "multi-controlnet", "sd15", "with_ip_adapter", "from_hub",
         "from_hub-adapter"],
)  # fmt: skip
def test_workflow_example_runs(files, example, args):
    output = f"{example}-{len(args(files))}.png"
    images = load_example(example).main(args(files) + common(files, output))
    assert (files / output).exists() and images[0].size == (64, 64)
    assert np.asarray(images[0]).std() > 1.0  # an image, not a blank
