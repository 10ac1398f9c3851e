"""`emojidiff-synthetic demo` (what `make demo` runs): the embedded default's grid, and its argument checks."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from emojidiff_synthetic.demo import main as demo_main


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` -> a hash of its bytes ("dir" for folders)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def test_demo_without_embedded_model_explains(tmp_path, capsys, monkeypatch):
    import emojidiff_synthetic.load as load

    monkeypatch.setattr(load, "EMOJIDIFF_DIR", tmp_path / "missing")
    assert demo_main(["demo"]) == 0
    assert "--model" in capsys.readouterr().out


def test_demo_draws_the_embedded_default(tmp_path, capsys):
    from emojidiff_synthetic.load import EMOJIDIFF_DIR

    if not (EMOJIDIFF_DIR / "emoji_adapter" / "config.json").is_file():
        pytest.skip(f"the embedded default is not built in this checkout ({EMOJIDIFF_DIR})")
    out = tmp_path / "demo.png"
    argv = ["demo", "--grid_identities", "2", "--grid_templates", "3", "--steps", "2", "--output", str(out)]
    assert demo_main(argv) == 0
    assert f"wrote {out.resolve()}" in capsys.readouterr().out
    grid = np.asarray(PIL.Image.open(out))
    assert grid.shape[0] > 64 * 2 and grid.shape[1] > 64 * 3 and grid.std() > 10  # a grid of faces, not blank
    sheet = np.asarray(PIL.Image.open(tmp_path / "demo_one_identity.png"))  # one identity x all 64 templates
    assert sheet.shape[:2] == (64 * 9, 64 * 16) and sheet[64:].std() > 10
    with pytest.raises(SystemExit, match="--grid_templates must be in"):
        demo_main(["demo", "--grid_templates", "65"])


@pytest.fixture
def demo_world(tmp_path, monkeypatch):
    import emojidiff_synthetic.load as load

    def refuse_to_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(load, "load_world", refuse_to_load)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "outdir").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (case id, argv after `demo`, regex of the one-line message)
DEMO_CASES = [
    ("steps 0", ["--steps", "0"], r"--steps must be >= 1, got 0"),
    ("negative steps", ["--steps", "-3"], r"--steps must be >= 1, got -3"),
    ("nan guidance", ["--guidance_scale", "nan"], r"--guidance_scale must be a finite number"),
    ("bad device", ["--device", "bogus"], r"--device 'bogus' is not a torch device"),
    ("output in a file", ["--output", "notes.txt/grid.png"], r"--output 'notes.txt/grid.png' is inside"),
    ("output names a folder", ["--output", "outdir"], r"--output 'outdir' is a folder"),
]


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in DEMO_CASES], ids=[c[0] for c in DEMO_CASES])
def test_demo_checks_every_argument_before_loading(demo_world, argv, pattern):
    before = snapshot(demo_world)
    with pytest.raises(SystemExit) as info:
        demo_main(["demo", *argv])
    message = str(info.value.code)
    assert message.startswith("emojidiff-synthetic demo: --") and "\n" not in message
    assert info.match(pattern)
    assert snapshot(demo_world) == before


def test_demo_runs_as_a_module(demo_world):
    out = subprocess.run(
        [sys.executable, "-m", "emojidiff_synthetic", "demo", "--steps", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=demo_world,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == ["emojidiff-synthetic demo: --steps must be >= 1, got 0."]
