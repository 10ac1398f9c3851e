"""Reliability (issue 11), training data and artefacts: the stage-1 cache key covers what the cache depends on
(class 5), a repeated photo never becomes its own identity reference (class 7), every JSONL reader names
file:line (class 10), the CLI checks its paths first (class 8), finished artefacts are atomic (class 4).
Table-driven; data cases also check that nothing on disk changed."""

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

from emojidiff_pipeline.train import cache, checkpoints
from emojidiff_pipeline.train.triplets import (
    Triplet,
    read_collection,
    read_jsonl,
    read_triplets,
    same_identity_triplets,
    unique_records,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` -> a hash of its bytes ("dir" for folders)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def write_png(path: Path, value: int = 100, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------- class 5: cache key
class CountingPrepare:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        import torch

        return {"latents": torch.full((1,), float(self.calls))}


@pytest.fixture
def cache_world(tmp_path, monkeypatch):
    from transformers import CLIPVisionConfig

    images = tmp_path / "images"
    paths = [write_png(images / f"{k}.png", 40 * k) for k in range(3)]
    recognizer = tmp_path / "arcface.onnx"
    recognizer.write_bytes(b"weights-v1")
    (tmp_path / "base" / "unet").mkdir(parents=True)  # the base pipeline folder
    (tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"old weights")
    world = SimpleNamespace(
        root=tmp_path,
        paths=paths,
        recognizer_file=recognizer,
        triplets=[
            Triplet(str(paths[0]), [str(paths[1])], str(paths[0]), "p"),
            Triplet(str(paths[1]), [str(paths[2])], str(paths[1]), "p"),
        ],
        pipe=SimpleNamespace(
            name_or_path=str(tmp_path / "base"),
            image_encoder=SimpleNamespace(config=CLIPVisionConfig(hidden_size=32, num_attention_heads=4)),
            feature_extractor=SimpleNamespace(to_dict=lambda: {"crop_size": 32}),
        ),
        face=SimpleNamespace(recognizer=SimpleNamespace(model_file=str(recognizer)), detector=None, det_size=(64, 64)),
        prepare=CountingPrepare(),
    )
    monkeypatch.setattr(cache, "prepare_cache", world.prepare)
    return world


def encode(world):
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    cache.load_or_prepare_cache(accelerator, world.pipe, world.face, world.triplets, 64, world.root / "cache")
    return world.prepare.calls


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def replace_recognizer(world):
    world.recognizer_file.write_bytes(b"weights-v2-longer")


def touch_recognizer(world):
    bump_mtime(world.recognizer_file)


def other_recognizer(world):
    other = world.root / "other.onnx"
    other.write_bytes(b"weights-v1")
    world.face.recognizer = SimpleNamespace(model_file=str(other))


def recognizer_without_file(world):
    world.face.recognizer = SimpleNamespace(kind="in-memory recognizer")


def replace_image_same_size(world):  # a photo replaced in place (same name, same byte count)
    data = bytearray(world.paths[2].read_bytes())
    world.paths[2].write_bytes(bytes(data))
    bump_mtime(world.paths[2])


def replace_image(world):
    write_png(world.paths[1], value=7, size=20)


def encoder_config(world):
    from transformers import CLIPVisionConfig

    world.pipe.image_encoder = SimpleNamespace(config=CLIPVisionConfig(hidden_size=48, num_attention_heads=4))


def feature_extractor(world):
    world.pipe.feature_extractor = SimpleNamespace(to_dict=lambda: {"crop_size": 64})


def pipeline_name(world):
    world.pipe.name_or_path = "another-base"


def base_replaced_in_place(world):
    (world.root / "base" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"new weights")


def face_settings(world):
    world.face.det_size = (128, 128)


# (case id, change after the first encoding): each must re-encode instead of reusing the cache
CACHE_CASES = [
    ("recognizer replaced in place", replace_recognizer),
    ("recognizer touched", touch_recognizer),
    ("another recognizer file", other_recognizer),
    ("recognizer without model_file", recognizer_without_file),
    ("reference image replaced, same size", replace_image_same_size),
    ("target image replaced", replace_image),
    ("image encoder config", encoder_config),
    ("feature extractor config", feature_extractor),
    ("pipeline name", pipeline_name),
    ("base folder replaced in place", base_replaced_in_place),
    ("face front-end settings", face_settings),
]


@pytest.mark.parametrize("change", [c[1] for c in CACHE_CASES], ids=[c[0] for c in CACHE_CASES])
def test_cache_is_rebuilt_when_a_dependency_changes(cache_world, change):
    assert encode(cache_world) == 1
    assert encode(cache_world) == 1  # unchanged: the cache is reused
    change(cache_world)
    assert encode(cache_world) == 2
    assert len(list((cache_world.root / "cache").glob("cache-*.safetensors"))) == 2


def test_cache_key_is_stable_across_processes_for_in_memory_models(cache_world):
    class Recognizer:  # default repr carries a memory address, which must not enter the key
        pass

    cache_world.face.recognizer = Recognizer()
    assert encode(cache_world) == 1
    cache_world.face.recognizer = Recognizer()
    assert encode(cache_world) == 1


def test_cache_key_names_a_vanished_image(cache_world):
    cache_world.paths[2].unlink()
    before = snapshot(cache_world.root)
    with pytest.raises(FileNotFoundError, match=rf"an image of triplet 1 '{cache_world.paths[2]}' cannot be read"):
        encode(cache_world)
    assert snapshot(cache_world.root) == before and cache_world.prepare.calls == 0


# ----------------------------------------------------------------------------------------------- class 7: duplicates
def rec(path, identity="a", caption="c"):
    return {"path": path, "identity": identity, "caption": caption}


# (case id, records, expected triplets, expected duplicates dropped)
DUPLICATE_CASES = [
    ("no duplicates", [rec("1.png"), rec("2.png"), rec("3.png")], 3, 0),
    ("a photo listed twice", [rec("1.png"), rec("2.png"), rec("1.png")], 2, 1),
    ("listed twice, other spelling", [rec("1.png"), rec("./1.png"), rec("x/../2.png")], 2, 1),
    ("the only other photo is the same one", [rec("1.png"), rec("1.png")], 0, 1),
    ("three copies and one other", [rec("1.png"), rec("1.png"), rec("1.png"), rec("2.png")], 2, 2),
    (
        "two identities, one duplicated",
        [rec("1.png"), rec("2.png"), rec("b1.png", "b"), rec("b1.png", "b"), rec("b2.png", "b")],
        4,
        1,
    ),
]


@pytest.mark.parametrize(
    "records,expected,dropped", [c[1:] for c in DUPLICATE_CASES], ids=[c[0] for c in DUPLICATE_CASES]
)
def test_a_photo_is_never_its_own_identity_reference(tmp_path, caplog, records, expected, dropped):
    with caplog.at_level(logging.WARNING, logger="emojidiff_pipeline.train.triplets"):
        triplets = same_identity_triplets(records, tmp_path, num_references=3)
    assert len(triplets) == expected
    for t in triplets:
        assert t.target not in t.references and len(set(t.references)) == len(t.references)
    assert (f"Dropped {dropped} duplicate" in caplog.text) == bool(dropped)


def test_a_photo_under_two_identities_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"list '1.png' under two identities: 'a' and 'b' \(record 1\)"):
        same_identity_triplets([rec("1.png"), rec("1.png", "b"), rec("2.png")], tmp_path)
    with pytest.raises(ValueError, match=r"record 0 has no `identity` field"):
        unique_records([{"path": "1.png"}], tmp_path)


# -------------------------------------------------------------------------------------------- class 10: JSONL readers
GOOD = json.dumps(rec("images/1.png")) + "\n"

# (case id, file bytes, regex after the file name): every error names file:line or the file
JSONL_CASES = [
    ("invalid JSON on line 3", (GOOD * 2 + '{"path": "x.png", "identity": \n').encode(), r":3: not valid JSON"),
    ("truncated last line", (GOOD + GOOD[:-9]).encode(), r":2: not valid JSON"),
    ("invalid UTF-8 on line 2", GOOD.encode() + b'{"path": "\xff.png"}\n', r":2: not valid UTF-8 \(byte 0xff"),
    (
        "Latin-1 caption",
        GOOD.encode() + json.dumps(rec("2.png")).replace('"c"', '"caf\xe9"').encode("latin-1"),
        r":2: not valid UTF-8",
    ),
    (
        "record without identity",
        (GOOD + '{"path": "2.png", "caption": "c"}\n').encode(),
        r":2: the record has no `identity` field",
    ),
    (
        "record without path",
        ("\n" + GOOD + '{"identity": "a", "caption": "c"}\n').encode(),
        r":3: the record has no `path` field",
    ),
    ("a list, not an object", (GOOD + "[1, 2]\n").encode(), r":2: expected a JSON object, got list"),
    ("path not a string", (GOOD + json.dumps(rec(3)) + "\n").encode(), r":2: `path` must be a non-empty string"),
    ("empty file", b"", r"' holds no records \(the file is empty\)"),
    ("blank lines only", b"\n  \n\n", r"' holds no records"),
]


def write_collection(tmp_path, data: bytes) -> Path:
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "collection.jsonl"
    path.write_bytes(data)
    write_png(tmp_path / "data" / "images" / "1.png")
    return path


def read_via_train_decoupled(path: Path, out: Path):
    import train_decoupled

    folders = ["--pretrained_model", str(out.parent / "no-model"), "--same_identity_from", str(path)]
    folders += ["--recognizer", "arcface.onnx", "--output_dir", str(out)]
    train_decoupled.main(train_decoupled.parse_args([*folders, "--max_steps", "1"]))


def read_via_idi(path: Path, out: Path):
    import idi

    folders = ["--pretrained_model", str(out.parent / "no-model"), "--collection", str(path), "--output_dir", str(out)]
    models = "--recognizer arcface.onnx --detector x:y --expression_estimator x:y --adapter a".split()
    idi.main(idi.parse_args([*folders, *models]))


READERS = {
    "read_collection": lambda path, out: read_collection(path),
    "train_decoupled --same_identity_from": read_via_train_decoupled,
    "idi --collection": read_via_idi,
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("data,pattern", [c[1:] for c in JSONL_CASES], ids=[c[0] for c in JSONL_CASES])
def test_collection_errors_name_file_and_line(tmp_path, reader, data, pattern):
    pytest.importorskip("accelerate")
    path = write_collection(tmp_path, data)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as info:
        READERS[reader](path, tmp_path / "run")
    assert str(path) in str(info.value) and str(tmp_path / "run") not in str(info.value)
    assert info.match(pattern)
    assert snapshot(tmp_path) == before  # no output folder, no derived file


def test_a_collection_without_pairs_is_blamed_on_itself(tmp_path):
    pytest.importorskip("accelerate")
    path = write_collection(tmp_path, (GOOD + json.dumps(rec("images/1.png")) + "\n").encode())  # one photo, twice
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"collection '{path}' gives no same-identity triplet"):
        read_via_train_decoupled(path, tmp_path / "run")
    assert snapshot(tmp_path) == before


def triplet_line(**overrides):
    item = {"template": "images/1.png", "references": ["images/1.png"], "target": "images/1.png", "prompt": "p"}
    item.update(overrides)
    return json.dumps({k: v for k, v in item.items() if v is not None}) + "\n"


# (case id, file bytes, regex after the file name)
TRIPLET_CASES = [
    ("invalid JSON on line 2", (triplet_line() + triplet_line()[:-10] + "\n").encode(), r":2: not valid JSON"),
    ("invalid UTF-8 on line 1", b'{"template": "\xc3\x28"}\n', r":1: not valid UTF-8 \(byte 0xc3"),
    ("no target", (triplet_line() + triplet_line(target=None)).encode(), r":2: the record has no `target` field"),
    ("no prompt", triplet_line(prompt=None).encode(), r":1: the record has no `prompt` field"),
    (
        "missing image",
        (triplet_line() * 2 + triplet_line(target="images/9.png")).encode(),
        r":3: image file\(s\) not found: \['images/9.png'\]",
    ),
    ("empty", b"\n", r"' holds no triplets"),
]


@pytest.mark.parametrize("data,pattern", [c[1:] for c in TRIPLET_CASES], ids=[c[0] for c in TRIPLET_CASES])
def test_triplet_manifest_errors_name_file_and_line(tmp_path, data, pattern):
    path = write_collection(tmp_path, data)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=pattern) as info:
        read_triplets(path)
    assert str(path) in str(info.value) and snapshot(tmp_path) == before


@pytest.mark.parametrize("make", ["missing", "folder"])
def test_jsonl_path_that_is_not_a_file(tmp_path, make):
    path = tmp_path / "c.jsonl"
    if make == "folder":
        path.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"manifest '{path}' (does not exist|is a folder, not a file)"):
        read_jsonl(path, ("path",))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"not an image"])
def test_unreadable_training_image_is_named(tmp_path, content):
    from emojidiff_pipeline.train.triplets import open_rgb

    good = write_png(tmp_path / "good.png", size=64)
    bad = tmp_path / "bad.png"
    bad.write_bytes(content or good.read_bytes()[:60])  # empty -> a truncated PNG
    with pytest.raises(ValueError, match=rf"training image '{bad}' cannot be read as an image"):
        open_rgb(bad, "training image")


# ----------------------------------------------------------------------------------------------- class 8: the CLI
@pytest.fixture
def cli_world(tmp_path, monkeypatch):
    import emojidiff_pipeline.pipeline as pipeline_module

    def refuse_to_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(pipeline_module.EmojiDiffPipeline, "from_pretrained", refuse_to_load)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    (tmp_path / "unet").mkdir()
    write_png(tmp_path / "me.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(write_png(tmp_path / "whole.png", size=64).read_bytes()[:70])
    (tmp_path / "outdir").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


MODEL = ["--model", "model", "--identity", "me.png", "--expression", "me.png"]

# (case id, argv after `generate`, regex of the one-line message)
CLI_CASES = [
    ("missing model folder", ["--model", "./nope", "--output", "o.png"],
     r"--model './nope' does not exist \(and is not a Hub id"),
    ("missing deep model path", ["--model", "a/b/c", "--output", "o.png"], r"--model 'a/b/c' does not exist"),
    ("model is a file", ["--model", "notes.txt"], r"--model 'notes.txt' is a file"),
    ("model folder without model_index", ["--model", "unet"], r"--model 'unet' has no model_index.json"),
    ("missing identity", [*MODEL[:2], "--identity", "gone.png"], r"--identity 'gone.png' does not exist"),
    ("second identity missing", [*MODEL[:2], "--identity", "me.png", "gone.png"],
     r"--identity 'gone.png' does not exist"),
    ("identity is a folder", [*MODEL[:2], "--identity", "outdir"], r"--identity 'outdir' is a folder"),
    ("identity not an image", [*MODEL[:2], "--identity", "notes.txt"],
     r"--identity 'notes.txt' cannot be read as an image"),
    ("identity truncated", [*MODEL[:2], "--identity", "cut.png"], r"--identity 'cut.png' cannot be read as an image"),
    ("identity without files", [*MODEL[:2], "--identity"], r"--identity was given without any file"),
    ("missing expression", [*MODEL[:4], "--expression", "gone.png"], r"--expression 'gone.png' does not exist"),
    ("expression not an image", [*MODEL[:4], "--expression", "notes.txt"], r"--expression 'notes.txt' cannot be read"),
    ("output inside a file", [*MODEL, "--output", "notes.txt/o.png"],
     r"--output 'notes.txt/o.png' is inside '.*notes.txt', which is a file"),
    ("output deeper inside a file", [*MODEL, "--output", "me.png/a/b.png"], r"is inside '.*me.png', which is a file"),
    ("output names a folder", [*MODEL, "--output", "outdir"], r"--output 'outdir' is a folder"),
    ("output ends with a slash", [*MODEL, "--output", "new/"], r"--output 'new/' is a folder"),
    ("output without image extension", [*MODEL, "--output", "o.result"],
     r"--output 'o.result' has no image extension"),
    ("steps 0 with model", [*MODEL, "--steps", "0"], r"--steps must be >= 1, got 0"),
    ("infinite identity scale", [*MODEL, "--identity_scale", "inf"], r"--identity_scale must be a finite number"),
    ("nan guidance", [*MODEL, "--guidance_scale", "nan"], r"--guidance_scale must be a finite number"),
    ("bad device", [*MODEL, "--device", "gpu0"], r"--device 'gpu0' is not a torch device"),
    # without --model: refused (the synthetic demo's own cases: synthetic/tests/test_demo.py)
    ("no model", [], r"--model is required: an EmojiDiff pipeline folder or Hub id"),
    ("no model: steps 0", ["--steps", "0"], r"--model is required"),
    ("no model: prompt", ["--prompt", "a cat"], r"--model is required"),
    ("no model: expression encoder", ["--expression_encoder", "m:f"], r"--model is required"),
    ("no model: identity", ["--identity", "me.png"], r"--model is required"),
]  # fmt: skip


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_checks_every_argument_before_loading(cli_world, argv, pattern):
    from emojidiff_pipeline.cli import main

    before = snapshot(cli_world)
    with pytest.raises(SystemExit) as info:
        main(["generate", *argv])
    message = str(info.value.code)
    assert message.startswith("emojidiff generate: --") and "\n" not in message  # non-zero: a message, not 0
    assert info.match(pattern)
    assert snapshot(cli_world) == before


def test_cli_refuses_an_unavailable_cuda_device(cli_world):
    import torch

    from emojidiff_pipeline.cli import main

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit, match=r"--device 'cuda': cuda is not available on this machine"):
        main(["generate", *MODEL, "--device", "cuda"])


def test_cli_refuses_a_read_only_output(cli_world, monkeypatch):
    import emojidiff_pipeline.cli as cli

    ro = cli_world / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root writes anywhere: stand in the access check (the refusal path is the same)
        real_access = os.access
        monkeypatch.setattr(cli.os, "access", lambda path, mode: Path(path) != ro and real_access(path, mode))
    with pytest.raises(SystemExit, match=rf"--output '{ro}/o.png' cannot be written: '{ro}' is not writable"):
        cli.main(["generate", *MODEL, "--output", str(ro / "o.png")])
    assert list(ro.iterdir()) == []


def test_cli_passes_a_hub_id_through_to_loading(cli_world):
    from emojidiff_pipeline.cli import main

    with pytest.raises(AssertionError, match="a model was loaded"):  # the checks pass; loading is next
        main(["generate", "--model", "someone/sdxl-emoji", "--identity", "me.png", "--output", "o.png"])


def test_cli_errors_are_one_line_without_traceback(cli_world):
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "emojidiff_pipeline.cli", "generate", "--model", "./nope"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cli_world,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "emojidiff generate: --model './nope' does not exist (and is not a Hub id of the form owner/name)."
    ]


# ------------------------------------------------------------------------------------------ class 4: atomic artefacts
KILL_PREAMBLE = """
import sys, time
from pathlib import Path
sys.path[:0] = [{src!r}, {training!r}, {tests!r}]
import safetensors.torch
from emojidiff_pipeline.train import cache, checkpoints
READY, OUT = Path({ready!r}), Path({out!r})
real_save = safetensors.torch.save


def block():
    READY.write_text("half written")
    time.sleep(300)


def half_save_file(tensors, filename, metadata=None):  # writes half of the real bytes, then hangs: killed mid-write
    data = real_save(tensors, metadata)
    Path(filename).write_bytes(data[: len(data) // 2])
    block()


safetensors.torch.save_file = cache.save_file = checkpoints.save_file = half_save_file
"""

KILL_ADAPTER = """
from emojidiff_pipeline import EmojiDiffAdapter
adapter = EmojiDiffAdapter.from_pretrained(OUT / "adapter")
next(adapter.parameters()).data += 1.0
checkpoints.save_pretrained_atomic(adapter, OUT / "adapter")
"""

KILL_CHECKPOINT = """
import torch
from emojidiff_pipeline import EmojiDiffAdapter
adapter = EmojiDiffAdapter.from_pretrained(OUT / "adapter")
checkpoints.save_checkpoint(OUT / "checkpoint-4", {"adapter": adapter}, torch.optim.AdamW(adapter.parameters()), 4)
"""

KILL_EXPORT = """
import targets
targets.export(str(OUT / "adapter"), OUT / "embedded")
"""

KILL_SHARD = """
from emojidiff_pipeline.train import triplets as T
calls = []
real = T.Triplet.to_json
def to_json(self, root=None):
    calls.append(1)
    if len(calls) == 2:
        block()
    return real(self, root)
T.Triplet.to_json = to_json
t = T.read_triplets(OUT / "data" / "shards" / "00000.jsonl")[0]
T.write_triplets([t, t, t], OUT / "data" / "shards" / "00001.jsonl")
"""

KILL_ROUND_STATS = """
from emojidiff_pipeline.train.idi import assemble_round
real_write_text = Path.write_text


def half_write_text(self, text, *args, **kwargs):
    if self.name.startswith("round_stats"):
        real_write_text(self, text[: len(text) // 2])
        block()
    return real_write_text(self, text, *args, **kwargs)


Path.write_text = half_write_text
assemble_round(OUT / "data", 1)
"""


def kill_world(root: Path) -> Path:
    """An adapter folder, a finished checkpoint, an exported default and a finished one-shard IDI round (before
    assembly) under `root`."""
    import targets
    import torch
    from tiny_models import tiny_adapter, tiny_components

    from emojidiff_pipeline.train.triplets import write_triplets

    adapter = tiny_adapter(tiny_components()["unet"])
    checkpoints.save_pretrained_atomic(adapter, root / "adapter")
    checkpoints.save_checkpoint(
        root / "checkpoint-2", {"adapter": adapter}, torch.optim.AdamW(adapter.parameters()), 2
    )
    targets.export(str(root / "adapter"), root / "embedded")
    image = write_png(root / "data" / "images" / "0.png")
    write_triplets([Triplet(str(image), [str(image)], str(image), "p")], root / "data" / "shards" / "00000.jsonl")
    (root / "data" / "shards" / "00000.stats.json").write_text(json.dumps([{"index": 0, "rejected": []}]))
    return root


def adapter_loads(folder: Path) -> bool:
    from emojidiff_pipeline import EmojiDiffAdapter

    EmojiDiffAdapter.from_pretrained(folder)
    return True


def round_not_done(out: Path) -> bool:  # the finished manifest may be there; the marker written last is not
    return (
        not (out / "data" / "round_stats.json").exists() and len(read_triplets(out / "data" / "triplets.jsonl")) == 1
    )


# (case id, child code, complete new files allowed besides temporaries, what must hold after the SIGKILL besides
# "every finished artefact is byte-identical")
KILL_CASES = [
    ("stage-1 adapter over an old one", KILL_ADAPTER, set(), lambda out: adapter_loads(out / "adapter")),
    (
        "checkpoint",
        KILL_CHECKPOINT,
        set(),
        lambda out: (
            checkpoints.find_checkpoint(out, "latest").name == "checkpoint-2" and not (out / "checkpoint-4").exists()
        ),
    ),
    (
        "results export of the embedded default",
        KILL_EXPORT,
        set(),
        lambda out: adapter_loads(out / "embedded" / "emoji_adapter"),
    ),
    ("IDI shard manifest", KILL_SHARD, set(), lambda out: not (out / "data" / "shards" / "00001.jsonl").exists()),
    ("IDI round_stats marker", KILL_ROUND_STATS, {"data/triplets.jsonl"}, round_not_done),
]


@pytest.mark.parametrize("code,allowed,check", [c[1:] for c in KILL_CASES], ids=[c[0] for c in KILL_CASES])
def test_sigkill_mid_write_leaves_no_half_artefact(tmp_path, code, allowed, check):
    import signal
    import subprocess
    import time

    pytest.importorskip("accelerate")
    out = kill_world(tmp_path / "run")
    before = snapshot(out)
    ready = tmp_path / "ready"
    child = (
        KILL_PREAMBLE.format(
            src=str(REPO / "src"),
            training=str(REPO / "training"),
            tests=str(REPO / "tests"),
            ready=str(ready),
            out=str(out),
        )
        + code
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the child never reached the blocked write: " + (
        proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = snapshot(out)
    new = {p for p in after if p not in before}
    assert any(".tmp" in p for p in new) and {p for p in new if ".tmp" not in p} <= allowed, new  # half: a temp name
    assert {p: h for p, h in after.items() if p in before} == before  # every finished artefact is unchanged
    assert check(out)
