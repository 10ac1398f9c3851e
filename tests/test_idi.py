"""IDI at tiny scale: rounds, filters and their logs, swapper backends, and a SIGKILL mid-round."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from face_standins import make_arcface_standin
from idi_standins import CENTRED_KPS, make_inswapper_standin
from tiny_models import tiny_adapter, tiny_components, write_tiny_collection

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
from emojidiff_pipeline.train.idi import DiffusionReIDBackend, INSwapperBackend, plan_pairs

pytest.importorskip("accelerate")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import idi  # noqa: E402

ACCEPT_ALL = ["--max_expression_error", "1", "--min_identity_similarity", "-1", "--max_template_similarity", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("idi")
    components = tiny_components()
    EmojiDiffPipeline(**components).save_pretrained(root / "base")
    tiny_adapter(components["unet"], num_expression_tokens=4, resampler_depth=1).save_pretrained(root / "adapter0")
    make_arcface_standin(root / "arcface.onnx", seed=2)
    write_tiny_collection(root / "collection", num_identities=4, photos_per_identity=2)
    return root


def idi_args(world, out, *extra):
    folders = ["--pretrained_model", str(world / "base"), "--adapter", str(world / "adapter0")]
    folders += ["--collection", str(world / "collection" / "train.jsonl"), "--output_dir", str(out)]
    front_end = ["--recognizer", str(world / "arcface.onnx"), "--detector", "idi_standins:fixed_detector"]
    front_end += ["--expression_estimator", "idi_standins:colour_scorer"]
    sizes = "--resolution 64 --num_inference_steps 2 --shard_size 2 --batch_size 2 --checkpointing_steps 2".split()
    return [*folders, *front_end, *sizes, *extra]


def test_plan_pairs_cross_identity(world):
    records = [json.loads(x) for x in (world / "collection" / "train.jsonl").read_text().splitlines()]
    pairs = plan_pairs(records, 20, num_references=2, seed=1)
    assert all(p.template["identity"] != p.references[0]["identity"] for p in pairs)
    assert all(len({r["identity"] for r in p.references}) == 1 for p in pairs)
    assert plan_pairs(records, 20, 2, seed=1) == pairs
    with pytest.raises(ValueError, match="at least 2 identities"):
        plan_pairs(records[:2], 3)


def test_plan_pairs_strip_expression_words_from_prompts(world):
    records = [json.loads(x) for x in (world / "collection" / "train.jsonl").read_text().splitlines()]
    records = [dict(r, caption=r["caption"] + ", smiling, Winking ") for r in records]
    pairs = plan_pairs(records, 5, seed=1, strip_words=["smiling", "winking"])
    assert {p.prompt for p in pairs} == {"flat emoji portrait"}
    assert plan_pairs(records, 1, seed=1)[0].prompt.endswith("smiling, Winking")


def test_batched_generation_matches_one_pair_per_call(world, tmp_path):
    rounds = "--rounds 1 --pairs_per_round 5 --steps_per_round 0".split()
    outs = {}
    for size in (1, 3):
        out = tmp_path / f"batch{size}"
        idi.main(idi.parse_args(idi_args(world, out, *rounds, *ACCEPT_ALL, "--generation_batch_size", str(size))))
        outs[size] = [json.loads(x) for x in (out / "round-0" / "data" / "triplets.jsonl").read_text().splitlines()]
    one, batched = outs[1], outs[3]
    assert [t["pair"] for t in one] == [t["pair"] for t in batched] == [0, 1, 2, 3, 4]
    for a, b in zip(one, batched, strict=True):  # each pair is seeded by its index, not its place in a batch
        assert abs(a["identity_similarity"] - b["identity_similarity"]) < 1e-3
        image_a = np.asarray(PIL.Image.open(tmp_path / "batch1" / "round-0" / "data" / a["target"]), int)
        image_b = np.asarray(PIL.Image.open(tmp_path / "batch3" / "round-0" / "data" / b["target"]), int)
        assert np.abs(image_a - image_b).max() <= 2
    with pytest.raises(SystemExit):
        idi.parse_args(idi_args(world, tmp_path / "bad", "--generation_batch_size", "0"))


def test_round_generates_filters_and_retrains(world, tmp_path):
    rounds = "--rounds 2 --pairs_per_round 4 --steps_per_round 2".split()
    summaries = idi.main(idi.parse_args(idi_args(world, tmp_path, *rounds, *ACCEPT_ALL)))
    assert [s["accepted"] for s in summaries] == [4, 4] and summaries[0]["yield"] == 1.0
    triplets = (tmp_path / "round-0" / "data" / "triplets.jsonl").read_text().splitlines()
    first = json.loads(triplets[0])
    assert first["template_identity"] != first["target_identity"]
    assert (tmp_path / "round-0" / "data" / first["target"]).is_file()
    assert {"expression_error", "identity_similarity", "template_similarity"} <= set(first)
    for r in (0, 1):  # each round retrains an adapter, round 1 on both rounds' data
        EmojiDiffAdapter.from_pretrained(tmp_path / f"round-{r}" / "stage1" / "adapter")
    info = json.loads((tmp_path / "round-1" / "stage1" / "run_info.json").read_text())
    assert info["num_triplets"] == 8


def test_strict_filters_log_rejections(world, tmp_path):
    strict = ["--max_expression_error", "0", "--min_identity_similarity", "1.01", "--max_template_similarity", "-1"]
    rounds = "--rounds 1 --pairs_per_round 3 --steps_per_round 0".split()
    summaries = idi.main(idi.parse_args(idi_args(world, tmp_path, *rounds, *strict)))
    assert summaries[0]["accepted"] == 0
    assert summaries[0]["rejected_by"] == {"expression": 3, "identity_to_reference": 3, "template_identity_leak": 3}
    assert (tmp_path / "round-0" / "data" / "triplets.jsonl").read_text() == ""


def test_sigkill_mid_round_loses_and_duplicates_nothing(world, tmp_path):
    rounds = "--rounds 1 --pairs_per_round 5 --shard_size 1 --steps_per_round 0".split()
    args = idi_args(world, "OUT", *rounds, *ACCEPT_ALL)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]))
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "training" / "idi.py"), *[str(killed) if a == "OUT" else a for a in args]]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = killed / "round-0" / "data" / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(shards.glob("*.jsonl"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = len(list(shards.glob("*.jsonl")))
    assert 2 <= finished_before < 5, "the run should die mid-round"
    assert not (killed / "round-0" / "data" / "triplets.jsonl").exists()
    idi.main(idi.parse_args([str(killed) if a == "OUT" else a for a in args]))  # restart to the end
    clean = tmp_path / "clean"
    idi.main(idi.parse_args([str(clean) if a == "OUT" else a for a in args]))
    a = (killed / "round-0" / "data" / "triplets.jsonl").read_text().splitlines()
    b = (clean / "round-0" / "data" / "triplets.jsonl").read_text().splitlines()
    assert len(a) == 5 and a == b
    assert len({json.loads(x)["pair"] for x in a}) == 5
    for line in a:
        target = json.loads(line)["target"]
        killed_bytes = (killed / "round-0" / "data" / target).read_bytes()
        assert killed_bytes == (clean / "round-0" / "data" / target).read_bytes()


def test_inswapper_backend_routes_and_swaps(world, tmp_path):
    pytest.importorskip("insightface")
    path = make_inswapper_standin(tmp_path / "inswapper_128.onnx")
    swapper = INSwapperBackend(path)
    image = np.asarray(PIL.Image.open(world / "collection" / "images" / "id0" / "0.png"))
    embedding = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    [out] = swapper([image], [CENTRED_KPS], [embedding / np.linalg.norm(embedding)], seeds=[0])
    assert out.shape == image.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - image).max() > 0
    with pytest.raises(ValueError, match="is not an INSwapper model"):
        INSwapperBackend(world / "arcface.onnx")
    with pytest.raises(FileNotFoundError, match="inswapper_128.onnx"):
        INSwapperBackend(tmp_path / "missing.onnx")


def test_diffusion_reid_changes_only_the_face(world):
    pipe = EmojiDiffPipeline.from_pretrained(world / "base")
    pipe.set_emoji_adapter(EmojiDiffAdapter.from_pretrained(world / "adapter0"))
    reid = DiffusionReIDBackend(pipe, strength=0.6, num_inference_steps=3)
    image = np.asarray(PIL.Image.open(world / "collection" / "images" / "id1" / "0.png"))
    embedding = np.ones(512, np.float32) / np.sqrt(512)
    [out] = reid([image], [CENTRED_KPS], [embedding], seeds=[0])
    assert out.shape == image.shape
    assert np.abs(out[30:40, 28:36].astype(int) - image[30:40, 28:36]).mean() > 1  # the face region changed
    np.testing.assert_array_equal(out[:4, :4], image[:4, :4])  # far outside the face mask: untouched
    # a batch: each image as if alone (its own seed and embedding), whatever else is in the batch
    other = np.asarray(PIL.Image.open(world / "collection" / "images" / "id2" / "1.png"))
    batch = reid([other, image], [CENTRED_KPS, CENTRED_KPS], [-embedding, embedding], seeds=[5, 0])
    assert np.abs(batch[1].astype(int) - out).max() <= 1
    assert reid([], [], [], []) == []
    with pytest.raises(ValueError, match="`reid_strength` must be in"):
        DiffusionReIDBackend(pipe, strength=0.0)
