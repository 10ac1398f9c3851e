"""`emojidiff app --model` (the Gradio app on a real EmojiDiff folder + insightface pack): argument checks before
anything loads, the served page on tiny components, and the message without gradio. The page in a browser, on the
synthetic default, is synthetic/tests/test_synthetic_app.py."""

import subprocess
import sys
from pathlib import Path

import pytest
from face_standins import ASTRONAUT_KPS, write_model_pack
from tiny_models import tiny_adapter, tiny_components

import emojidiff_pipeline.app as app
from emojidiff_pipeline import EmojiDiffPipeline
from emojidiff_pipeline.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_and_pack(tmp_path, monkeypatch):
    for name in ("EMOJIDIFF_MODEL", "INSIGHTFACE_MODEL", "INSIGHTFACE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    components = tiny_components()
    EmojiDiffPipeline(**components, emoji_adapter=tiny_adapter(components["unet"])).save_pretrained(tmp_path / "model")
    write_model_pack(tmp_path / "faces", "pack", faces=[{"kps": ASTRONAUT_KPS}], image_size=(512, 512))
    (tmp_path / "notes.txt").write_text("not a model")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (case id, argv after `emojidiff app`, regex of the one-line message)
REFUSALS = [
    ("no model", ["--face_model", "pack", "--face_root", "faces"], r"--model \(or EMOJIDIFF_MODEL\) is required"),
    ("model is a file", ["--model", "notes.txt"], r"--model 'notes.txt' is a file"),
    ("no model_index", ["--model", "faces"], r"--model 'faces' has no model_index.json"),
    (
        "missing face pack",
        ["--model", "model", "--face_model", "antelopev2", "--face_root", "faces"],
        r"--face_model 'antelopev2' --face_root 'faces': insightface model pack `antelopev2` not found",
    ),
    (
        "bad port",
        ["--model", "model", "--face_model", "pack", "--face_root", "faces", "--port", "-1"],
        r"--port must be in \[0, 65535\], got -1",
    ),
]


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_app_checks_arguments_before_loading(model_and_pack, monkeypatch, argv, pattern):
    monkeypatch.setattr(app, "load_pipeline", lambda *a, **k: pytest.fail("loaded before checking arguments"))
    with pytest.raises(SystemExit) as info:
        cli_main(["app", *argv])
    message = str(info.value.code)
    assert message.startswith("emojidiff app: --") and "\n" not in message
    assert info.match(pattern)


def test_app_serves_a_model_folder_with_a_face_pack(model_and_pack, monkeypatch):
    gr = pytest.importorskip("gradio", reason="gradio is not installed (the [app] and [test] extras have it)")
    served = {}
    monkeypatch.setattr(app, "launch", lambda demo, args, **kwargs: served.update(demo=demo, args=args))
    monkeypatch.setenv("EMOJIDIFF_MODEL", "model")  # the env var stands in for --model
    monkeypatch.setenv("INSIGHTFACE_ROOT", "faces")
    assert cli_main(["app", "--face_model", "pack", "--port", "7861"]) == 0
    assert isinstance(served["demo"], gr.Blocks)
    assert (served["args"].host, served["args"].port, served["args"].model) == ("127.0.0.1", 7861, "model")
    ids = {getattr(block, "elem_id", None) for block in served["demo"].blocks.values()}
    assert {app.ELEM_IDS[k] for k in ("identity", "template", "prompt", "generate", "output")} <= ids


def test_app_without_gradio_says_how_to_install(monkeypatch):
    monkeypatch.setattr(app, "is_gradio_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "emojidiff_pipeline\[app\]"'):
        app.build_app(pipe=None)


def test_gradio_app_example_serves_model_when_given(tmp_path):
    """examples/gradio_app.py: --model goes to `emojidiff app` (here refused: no such folder)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "gradio_app.py"), "--model", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "gradio_app.py: --model" in out.stderr and "does not exist" in out.stderr
