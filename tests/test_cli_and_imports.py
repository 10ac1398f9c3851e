"""The `emojidiff` CLI, encoders running once per call, and importing without the optional stacks."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from face_standins import ASTRONAUT_KPS, write_model_pack
from tiny_models import random_identity, tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffPipeline
from emojidiff_pipeline.cli import main as cli_main
from emojidiff_pipeline.face import FaceAnalyzer


def test_import_without_face_and_training_stacks():
    blocked = ["insightface", "onnxruntime", "onnx", "cv2", "accelerate", "peft", "skimage"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import emojidiff_pipeline\n"
        "from emojidiff_pipeline import EmojiDiffPipeline, EmojiDiffAdapter\n"
        "import emojidiff_pipeline.face as face\n"
        "try:\n"
        "    import numpy as np\n"
        "    face.FaceAnalyzer.from_models(lambda image: [], recognizer=None).detect(np.zeros((8, 8, 3), np.uint8))\n"
        "except ImportError as err:\n"
        "    assert 'pip install' in str(err), err\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_encoders_run_once_per_call(monkeypatch, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    components = tiny_components()
    pipe = EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))
    write_model_pack(tmp_path, "pack", faces=[{"kps": ASTRONAUT_KPS}], image_size=(512, 512))
    pipe.set_face_analyzer(FaceAnalyzer("pack", root=tmp_path))
    counts = {"image_encoder": 0, "adapter": 0, "identity": 0, "unet": 0}
    for name, module in (("image_encoder", pipe.image_encoder), ("adapter", pipe.emoji_adapter), ("unet", pipe.unet)):
        module.register_forward_hook(lambda *a, name=name: counts.__setitem__(name, counts[name] + 1))
    original = pipe.face_analyzer.identity_embedding
    monkeypatch.setattr(
        pipe.face_analyzer,
        "identity_embedding",
        lambda *a, **k: counts.__setitem__("identity", counts["identity"] + 1) or original(*a, **k),
    )
    photo = skimage_data.astronaut()
    pipe("a face", identity_image=photo, expression_image=photo, num_inference_steps=4, output_type="latent")
    assert counts == {"image_encoder": 1, "adapter": 1, "identity": 1, "unet": 4}


def test_library_never_imports_the_proving_ground():
    """The library wing (DESIGN.md) stands alone: no library module imports emojidiff_synthetic, and the installed
    package holds no synthetic code or weights."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import emojidiff_pipeline\n"
        "import emojidiff_pipeline.pipeline, emojidiff_pipeline.adapter, emojidiff_pipeline.train.stage1\n"
        "import emojidiff_pipeline.evaluation, emojidiff_pipeline.cli\n"
        "for info in pkgutil.walk_packages(emojidiff_pipeline.__path__, 'emojidiff_pipeline.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(sorted(m for m in sys.modules if 'synthetic' in m))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    import emojidiff_pipeline

    package = Path(emojidiff_pipeline.__file__).parent
    assert not (package / "synthetic").exists()
    assert not [p for p in package.rglob("*") if p.suffix in {".safetensors", ".onnx", ".bin", ".pt"}]


def test_cli_generate_requires_a_model(capsys):
    with pytest.raises(SystemExit, match=r"^emojidiff generate: --model is required: .*emojidiff-synthetic demo"):
        cli_main(["generate"])
    with pytest.raises(SystemExit, match="--model is required"):
        cli_main(["generate", "--identity", "x.png"])


def test_cli_with_model_generates(tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    components = tiny_components()
    EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"])).save_pretrained(tmp_path / "model")
    write_model_pack(tmp_path / "faces", "pack", faces=[{"kps": ASTRONAUT_KPS}], image_size=(512, 512))
    PIL.Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    out = tmp_path / "out" / "grid.png"
    inputs = ["--identity", str(tmp_path / "astronaut.png"), "--expression", str(tmp_path / "astronaut.png")]
    faces = ["--face_model", "pack", "--face_root", str(tmp_path / "faces")]
    code = cli_main(
        ["generate", "--model", str(tmp_path / "model"), *inputs, "--prompt", "a face", *"--steps 2 --seed 3".split()]
        + [*faces, "--output", str(out)]
    )
    assert code == 0 and PIL.Image.open(out).size == (64, 64)
    assert f"wrote {out.resolve()}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--steps must be >= 1, got 0"):
        cli_main(["generate", "--model", str(tmp_path / "model"), "--steps", "0"])


def test_identity_embeds_broadcast_over_prompts():
    components = tiny_components()
    pipe = EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"]))
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    one = random_identity()
    a = pipe(["a", "b"], identity_embeds=one, num_inference_steps=1, output_type="np", generator=gens).images
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    b = pipe(
        ["a", "b"], identity_embeds=one.expand(2, -1, -1), num_inference_steps=1, output_type="np", generator=gens
    ).images
    assert np.abs(a - b).max() <= 1e-6
