"""The photo collection at toy size: manifests, held-out split, determinism, crash recovery, reader validation, CLI."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emojidiff_synthetic import (
    EXPRESSION_FIELDS,
    HAIR_STYLES,
    STYLE_CHOICES,
    Expression,
    Identity,
    Style,
    render,
)
from emojidiff_synthetic.collection import Collection, build_collection, captions, make_caption
from emojidiff_synthetic.collection import build as collection_build
from emojidiff_synthetic.renderer import colors
from emojidiff_synthetic.world import identity_name, is_held_out

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "synthetic" / "scripts" / "build_collection.py"
SMALL = {"num_identities": 25, "photos_per_identity": 3, "size": 64, "seed": 0}
HELD_OUT = [identity_name(i) for i in range(SMALL["num_identities"]) if is_held_out(i)]  # id00009, id00019
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), str(REPO / "synthetic" / "src"), os.environ.get("PYTHONPATH", "")]
    ),
}


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (hidden build files included)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load_cli():
    spec = importlib.util.spec_from_file_location("build_collection_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection") / "small"
    report = build_collection(root, **SMALL, shard_size=7)
    assert report.shards_total == 4 and report.shards_built == 4 and not report.already_complete
    return root


# ---- layout and manifests ------------------------------------------------------------------------------------


def test_manifest_integrity(small):
    c = Collection(small)
    assert c.size == 64 and c.num_identities == 25 and c.photos_per_identity == 3
    assert sorted(p.name for p in small.iterdir()) == [
        "collection.json",
        "ground_truth.jsonl",
        "heldout.jsonl",
        "images",
        "train.jsonl",
    ]
    styles = {e["path"]: e["style"] for e in c.ground_truth()}
    for split in ("train", "heldout"):
        records = c.records(split)
        assert len(records) == c.metadata["counts"][split]["photos"]
        for r in records:
            assert sorted(r) == ["caption", "identity", "kps", "path"]
            assert (small / r["path"]).is_file()
            assert Path(r["path"]).parent.name == r["identity"]
            image = c.load_image(r)
            assert image.shape == (64, 64, 3) and image.dtype == np.uint8
            caption = r["caption"]
            assert caption.strip() and caption.startswith(styles[r["path"]]["rendering"] + " emoji")
            assert f"{styles[r['path']]['palette']} palette" in caption
            assert np.asarray(r["kps"]).shape == (5, 2)
    assert len(c.identities("train")) == 23 and c.identities("heldout") == HELD_OUT
    assert len(list((small / "images").glob("*/*.png"))) == 25 * 3


def test_heldout_identities_appear_in_no_training_file(small):
    train_text = (small / "train.jsonl").read_text()
    meta_text = (small / "collection.json").read_text()
    for name in HELD_OUT:
        assert name not in train_text and name not in meta_text
    heldout = Collection(small).records("heldout")
    assert sorted({r["identity"] for r in heldout}) == HELD_OUT
    assert len(heldout) == len(HELD_OUT) * 3
    assert set(Collection(small).identities("train")).isdisjoint(HELD_OUT)


def test_ground_truth_describes_the_images(small):
    c = Collection(small)
    truth = c.ground_truth()
    assert len(truth) == 25 * 3
    assert [t["path"] for t in truth] == sorted(t["path"] for t in truth)
    records = {r["path"]: r for split in ("train", "heldout") for r in c.records(split)}
    assert set(records) == {t["path"] for t in truth}
    for t in truth[::11]:  # re-render a few photos from their factors
        identity, expression, style, pose = Collection.factors_of(t)
        assert identity == Identity.from_seed(t["identity_seed"])
        assert len(t["expression"]) == len(EXPRESSION_FIELDS)
        result = render(identity, expression, style, pose, size=64)
        np.testing.assert_array_equal(c.load_image(records[t["path"]]), result.image)
        np.testing.assert_allclose(records[t["path"]]["kps"], result.keypoints, atol=1e-3)
    # photos of one identity differ in expression and style; identities differ
    first = [t for t in truth if t["identity"] == "id00003"]
    assert len({tuple(t["expression"]) for t in first}) == 3
    assert len({json.dumps(t["identity_factors"], sort_keys=True) for t in truth}) == 25


# ---- determinism and crash recovery --------------------------------------------------------------------------


def test_rebuild_is_byte_identical_for_any_workers_and_shard_size(small, tmp_path):
    report = build_collection(tmp_path / "again", **SMALL, workers=2, shard_size=4)
    assert report.shards_built == 7
    assert _tree(tmp_path / "again") == _tree(small)


def test_seed_changes_photos_but_not_identities(small, tmp_path):
    build_collection(tmp_path / "seed1", **{**SMALL, "seed": 1})
    a, b = Collection(small).ground_truth(), Collection(tmp_path / "seed1").ground_truth()
    assert [t["identity_factors"] for t in a] == [t["identity_factors"] for t in b]
    assert all(x["pose"] != y["pose"] for x, y in zip(a, b))  # (expressions may coincide: the neutral preset)
    assert sum(x["expression"] != y["expression"] for x, y in zip(a, b)) > len(a) // 2


def test_photo_streams_do_not_alias_identity_streams(small):
    # numpy's SeedSequence drops trailing zero words: without the stream tag, photo 0 of identity 0 would copy the
    # factors of identity `seed` (here identity 0 itself)
    t = Collection(small).ground_truth()[0]
    assert Expression.from_vector(t["expression"]) != Expression.random(np.random.default_rng(0))


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"build exited with {proc.returncode} before the kill point")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("kill point not reached in time")
        time.sleep(0.01)


def test_resume_after_sigkill_equals_uninterrupted_build(small, tmp_path):
    out, doc = tmp_path / "killed", tmp_path / "collection.md"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--num_identities", "25", "--photos_per_identity", "3"]
    cmd += ["--workers", "1", "--shard_size", "5", "--doc", str(doc)]
    shards = out / ".build" / "shards"
    for committed in (1, 3):  # kill mid-shard: after `committed` shards, while shard `committed` is half written
        proc = subprocess.Popen(
            cmd + ["--identity_delay_s", "0.2"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        first_of_next = out / "images" / identity_name(5 * committed) / "02.png"

        def shard_committed(committed=committed, first_of_next=first_of_next):
            return len(list(shards.glob("shard_*.jsonl"))) >= committed and first_of_next.exists()

        _wait_for(shard_committed, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(list(shards.glob("shard_*.jsonl"))) == committed
        assert not (out / "collection.json").exists() and not doc.exists()
        with pytest.raises(FileNotFoundError, match="unfinished build"):
            Collection(out)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 of 5 shards were committed by an earlier run" in done.stderr
    assert _tree(out) == _tree(small)  # no lost, duplicated or stray files; .build removed
    text = doc.read_text()
    assert "--num_identities 25 --photos_per_identity 3" in text and "Wall-clock:" in text
    assert "resumed an interrupted build" in text and "| train (`train.jsonl`) | 23 | 69 |" in text


def test_crash_while_assembling_then_resume(small, tmp_path, monkeypatch):
    real = collection_build._atomic_write_bytes

    def crash_on_heldout(path, data, tmp_dir):
        if path.name == "heldout.jsonl":
            raise KeyboardInterrupt("simulated crash")
        real(path, data, tmp_dir)

    monkeypatch.setattr(collection_build, "_atomic_write_bytes", crash_on_heldout)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        build_collection(out, **SMALL)
    assert (out / "train.jsonl").exists() and not (out / "collection.json").exists()
    monkeypatch.setattr(collection_build, "_atomic_write_bytes", real)
    with pytest.raises(ValueError, match=r"unfinished build with other settings.*'seed': \(0, 3\)"):
        build_collection(out, **{**SMALL, "seed": 3})
    report = build_collection(out, **SMALL)
    assert report.shards_resumed == report.shards_total and report.shards_built == 0
    assert _tree(out) == _tree(small)


def test_finished_collection_is_left_alone(small, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(small, out)
    (out / ".build" / "tmp").mkdir(parents=True)  # a build killed while removing its scratch folder
    report = build_collection(out, **SMALL)
    assert report.already_complete and report.shards_built == 0
    assert _tree(out) == _tree(small)
    with pytest.raises(ValueError, match="already holds a finished collection"):
        build_collection(out, **{**SMALL, "photos_per_identity": 4})


# ---- reader validation ---------------------------------------------------------------------------------------


def _with_line(small: Path, tmp_path: Path, name: str, lineno: int, edit) -> Collection:
    root = tmp_path / "edited"
    root.mkdir()
    for f in ("collection.json", "train.jsonl", "heldout.jsonl", "ground_truth.jsonl"):
        shutil.copy(small / f, root / f)
    lines = (root / name).read_text().splitlines()
    lines[lineno - 1] = edit(lines[lineno - 1], lines)
    (root / name).write_text("\n".join(lines) + "\n")
    return Collection(root)


def _edit_json(fn):
    def edit(line, lines):
        obj = json.loads(line)
        fn(obj)
        return json.dumps(obj)

    return edit


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda line, lines: line[:-5], "not valid JSON"),
        (lambda line, lines: "", "empty line"),
        (lambda line, lines: "[1, 2]", "expected a JSON object"),
        (_edit_json(lambda r: r.pop("caption")), r"missing \['caption'\]"),
        (_edit_json(lambda r: r.update(extra=1)), r"unexpected \['extra'\]"),
        (_edit_json(lambda r: r.update(caption=" ")), "`caption` must be a non-empty string"),
        (_edit_json(lambda r: r.update(identity="id00002")), "is not in the folder of identity 'id00002'"),
        (_edit_json(lambda r: r.update(path="/etc/passwd")), "`path` must be"),
        (_edit_json(lambda r: r.update(path="images/id00009/00.png", identity="id00009")), "held-out identity"),
        (_edit_json(lambda r: r.update(kps=[[1.0, 2.0]] * 4)), "`kps` must be 5"),
        (_edit_json(lambda r: r.update(kps=[[1.0, "x"]] * 5)), "`kps` must be 5"),
        (lambda line, lines: lines[1], "duplicate `path`"),
    ],
)
def test_corrupted_manifest_line_names_file_and_line(small, tmp_path, edit, problem):
    c = _with_line(small, tmp_path, "train.jsonl", 3, edit)
    with pytest.raises(ValueError, match=rf"train\.jsonl:3: .*{problem}"):
        c.records("train")


def test_corrupted_ground_truth_and_truncated_manifest(small, tmp_path):
    c = _with_line(small, tmp_path, "ground_truth.jsonl", 2, _edit_json(lambda t: t["expression"].pop()))
    with pytest.raises(ValueError, match=r"ground_truth\.jsonl:2: invalid factors"):
        c.ground_truth()
    lines = (c.root / "heldout.jsonl").read_text().splitlines()
    (c.root / "heldout.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"heldout\.jsonl: 5 lines, but collection\.json says 6"):
        c.records("heldout")


def test_reader_errors(small, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished photo collection"):
        Collection(tmp_path)
    c = Collection(small)
    with pytest.raises(ValueError, match=r"`split` must be one of \('train', 'heldout'\), got 'val'"):
        c.records("val")
    with pytest.raises(ValueError, match="record\\['path'\\]"):
        c.load_image({"path": "../../etc/passwd"})


# ---- captions ------------------------------------------------------------------------------------------------

_FACTOR_WORDS = re.compile(r"\d|_|\b(gaze|jaw|pucker|brow_|scale|tilt|shift|factor)\b")


def test_captions_leak_no_factor_values(small):
    captions = [r["caption"] for split in ("train", "heldout") for r in Collection(small).records(split)]
    rng = np.random.default_rng(0)
    for _ in range(2000):
        identity, expression, style = Identity.random(rng), Expression.random(rng), Style.random(rng)
        caption = make_caption(identity, expression, style, rng)
        assert caption.startswith(f"{style.rendering} emoji") and f"{style.background} {style.pattern}" in caption
        captions.append(caption)
    for caption in captions:
        assert not _FACTOR_WORDS.search(caption), caption
        assert any(word in caption for word in STYLE_CHOICES["rendering"])


def test_caption_expression_words_only_when_clearly_present():
    identity, style = Identity.from_seed(1), Style()

    def captions(expression, n=200):
        return [make_caption(identity, expression, style, np.random.default_rng(k)) for k in range(n)]

    words = ("smiling", "laughing", "frowning", "open mouth", "winking", "eyes closed", "pursed lips", "raised")
    for weak in (Expression(), Expression(smile=0.2), Expression(frown=0.3, jaw_open=0.3), Expression(gaze_x=1.0)):
        assert not any(w in c for c in captions(weak) for w in words)
    smiling = sum("smiling" in c for c in captions(Expression(smile=0.9)))
    assert 0.5 * 200 < smiling < 200  # usually said, sometimes omitted
    winks = captions(Expression(eye_close_left=1.0))
    assert any("winking" in c for c in winks) and not any("eyes closed" in c for c in winks)
    closed = captions(Expression(eye_close_left=1.0, eye_close_right=0.95))
    assert any("eyes closed" in c for c in closed) and not any("winking" in c for c in closed)


def test_caption_vocabularies_match_the_renderer():
    assert set(captions._HAIR_PHRASES) == set(HAIR_STYLES)
    assert len(captions._HAIR_COLOR_WORDS) == len(colors.HAIR_RAMP)
    assert len(captions._SKIN_WORDS) == len(colors.SKIN_RAMP)


# ---- arguments and CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_identities": 9}, "`num_identities` must be an int in \\[10, 100000\\].*got 9"),
        ({"num_identities": True}, "`num_identities`"),
        ({"photos_per_identity": 1}, "`photos_per_identity` must be an int in \\[2, 99\\]"),
        ({"size": 8}, "`size` must be an int in \\[16, 512\\]"),
        ({"seed": -1}, "`seed` must be a non-negative int"),
        ({"workers": 0}, "`workers` must be an int >= 1"),
        ({"shard_size": 0}, "`shard_size` must be an int >= 1"),
        ({"identity_delay_s": -1.0}, "`identity_delay_s`"),
    ],
)
def test_build_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_collection(tmp_path / "out", **{**SMALL, **kwargs})
    assert not (tmp_path / "out").exists()


def test_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no collection build"):
        build_collection(tmp_path, **SMALL)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: --out"),
        (["--num_identities", "5"], "--num_identities must be an int in [10, 100000]"),
        (["--photos_per_identity", "1"], "--photos_per_identity must be an int in [2, 99]"),
        (["--size", "600"], "--size must be an int in [16, 512]"),
        (["--seed", "-2"], "--seed must be a non-negative int, got -2"),
        (["--workers", "0"], "--workers must be an int >= 1, got 0"),
        (["--num_identities", "many"], "argument --num_identities: invalid int value: 'many'"),
    ],
)
def test_cli_argument_errors(tmp_path, capsys, argv, message):
    cli = _load_cli()
    if argv:
        argv = ["--out", str(tmp_path / "out"), *argv]
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_import_needs_no_torch():
    code = "import sys, emojidiff_synthetic.collection; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
