"""The synthetic world's keypoint detectors: shipped weights, FaceAnalyzer integration, errors, tiny training run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emojidiff_synthetic import Expression, Identity, Pose, Style, render
from emojidiff_synthetic.keypoints import (
    KeypointDetector,
    KeypointNet,
    default_asset_path,
    keypoint_errors,
    load_keypoint_detector,
    save_keypoint_net,
)
from emojidiff_synthetic.world import is_held_out

REPO = Path(__file__).resolve().parents[2]
HELD_OUT = [i for i in range(200) if is_held_out(i)][:8]


def held_out_render(identity_id: int, size: int = 64, seed: int = 0):
    rng = np.random.default_rng([seed, identity_id])
    factors = (Identity.from_seed(identity_id), Expression.random(rng), Style.random(rng), Pose.random(rng))
    return render(*factors, size=size)


@pytest.fixture(scope="module")
def renders():
    return [held_out_render(i) for i in HELD_OUT]


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return KeypointDetector(KeypointNet(widths=(4, 4, 8, 8)))


@pytest.fixture(scope="module")
def detectors():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches; leave the cores to other work
    yield {side: load_keypoint_detector(side) for side in ("train", "eval")}
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# Shipped detectors
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["train", "eval"])
def test_shipped_detector_is_accurate_on_held_out_renders(detectors, renders, side):
    path = default_asset_path(side)
    assert path.is_file() and path.stat().st_size < 1_000_000
    detector = detectors[side]
    kps, scores = detector.predict(np.stack([r.image for r in renders]))
    assert kps.shape == (len(renders), 5, 2) and kps.dtype == np.float32
    assert scores.shape == (len(renders),) and np.all(scores > 0.5)
    errors = keypoint_errors(kps, np.stack([r.keypoints for r in renders]))
    assert errors.mean() <= 1.5, errors.mean(axis=1)

    # the FaceAnalyzer callable interface gives the same keypoints, a box around them and the score
    (bbox, kps0, score), *rest = detector(renders[0].image)
    assert rest == [] and bbox.shape == (4,) and kps0.shape == (5, 2)
    np.testing.assert_allclose(kps0, kps[0], atol=1e-4)
    assert score == pytest.approx(float(scores[0]), abs=1e-6)
    assert bbox[0] < kps0[:, 0].min() and bbox[2] > kps0[:, 0].max()
    assert bbox[1] < kps0[:, 1].min() and bbox[3] > kps0[:, 1].max()


def test_128px_input_is_resized_and_scaled_back(detectors):
    r128 = held_out_render(HELD_OUT[0], size=128)
    kps, scores = detectors["train"].predict(r128.image[None])
    assert scores[0] > 0.5
    assert keypoint_errors(kps[0], r128.keypoints).mean() <= 3.0  # 1.5 px at 64x64


def test_the_two_sides_are_different_models(detectors):
    a = detectors["train"].model.state_dict()
    b = detectors["eval"].model.state_dict()
    assert not torch.equal(a["heatmap.weight"], b["heatmap.weight"])


def test_face_analyzer_expression_crop_from_detected_keypoints(detectors, renders):
    pytest.importorskip("insightface")
    pytest.importorskip("cv2")
    from emojidiff_pipeline.face import FaceAnalyzer

    analyzer = FaceAnalyzer.from_models(detector=load_keypoint_detector("train"), recognizer=None)
    r = renders[1]
    crop, mask = analyzer.expression_crop(r.image, size=112)
    assert crop.size == (112, 112) and crop.mode == "RGB" and mask.shape == (112, 112)
    # the crop matches the one aligned on the true keypoints
    reference, _ = analyzer.expression_crop(r.image, size=112, kps=r.keypoints)
    diff = np.abs(np.asarray(crop, np.float64) - np.asarray(reference, np.float64))
    assert diff.mean() < 12.0, diff.mean()


def test_blank_image_has_no_face(detectors):
    pytest.importorskip("insightface")
    pytest.importorskip("cv2")
    from emojidiff_pipeline.face import FaceAnalyzer

    blank = np.full((64, 64, 3), 200, dtype=np.uint8)
    assert detectors["train"](blank) == []
    assert detectors["eval"](blank) == []
    analyzer = FaceAnalyzer.from_models(detector=detectors["train"], recognizer=None)
    with pytest.raises(ValueError, match="No face found in `expression_image`"):
        analyzer.expression_crop(blank)


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def test_bad_side_and_missing_or_non_safetensors_files(tmp_path):
    with pytest.raises(ValueError, match=r"`side` must be one of \['train', 'eval'\], got 'test'"):
        load_keypoint_detector("test")
    with pytest.raises(FileNotFoundError, match=r"not found: .*missing\.safetensors.*train_keypoints\.py"):
        load_keypoint_detector("train", path=tmp_path / "missing.safetensors")
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04not a pickle we would ever open")
    with pytest.raises(ValueError, match="safetensors files only"):
        load_keypoint_detector("train", path=tmp_path / "weights.bin")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="Could not read keypoint detector weights"):
        load_keypoint_detector("train", path=tmp_path / "junk.safetensors")


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((64, 64), np.uint8), r"shape \(S, S, 3\), got an array of shape \(64, 64\)"),
        (np.zeros((64, 48, 3), np.uint8), r"square RGB images .* shape \(64, 48, 3\)"),
        (np.zeros((64, 64, 4), np.uint8), r"shape \(64, 64, 4\)"),
        (np.zeros((64, 64, 3), np.float32), "dtype uint8.*float32"),
        (np.zeros((16, 16, 3), np.uint8), "too small: side 16 < 32"),
        ([[0, 0, 0]], "np.ndarray .* got builtins.list"),
    ],
)
def test_bad_images(untrained, image, match):
    with pytest.raises(ValueError, match=match):
        untrained(image)


def test_bad_batches(untrained):
    with pytest.raises(ValueError, match=r"\(N, S, S, 3\), got an array of shape \(64, 64, 3\)"):
        untrained.predict(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        untrained.predict(np.zeros((0, 64, 64, 3), np.uint8))
    kps, scores = untrained.predict(np.zeros((3, 96, 96, 3), np.uint8))  # other square sizes are resized
    assert kps.shape == (3, 5, 2) and scores.shape == (3,)


def test_bad_constructor_arguments():
    model = KeypointNet()
    with pytest.raises(ValueError, match=r"`threshold` must be a float in \(0, 1\), got 1.5"):
        KeypointDetector(model, threshold=1.5)
    with pytest.raises(ValueError, match="`side` must be one of"):
        KeypointDetector(model, side="val")
    with pytest.raises(ValueError, match=r"`heatmap_stride` must be one of \[2, 4\], got 8"):
        KeypointNet(heatmap_stride=8)
    with pytest.raises(ValueError, match="`widths` must be 4 positive ints"):
        KeypointNet(widths=(8, 8))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = KeypointNet(widths=(4, 4, 8, 8), heatmap_stride=2).eval()
    path = save_keypoint_net(model, tmp_path / "tiny.safetensors", {"note": "test"})
    detector = load_keypoint_detector("eval", path=path)
    assert detector.side == "eval" and detector.model.config == model.config
    image = held_out_render(HELD_OUT[0]).image
    with torch.no_grad():
        from emojidiff_synthetic.keypoints import images_to_tensor

        expected = model.half().float()(images_to_tensor(image[None]))[0].numpy()  # weights as stored (fp16)
    np.testing.assert_allclose(detector.predict(image[None])[0], expected, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Training script
# ----------------------------------------------------------------------------------------------------------------


def _train_args(tmp_path: Path, name: str, *extra: str):
    sys.path.insert(0, str(REPO / "synthetic" / "scripts"))
    import train_keypoints

    folders = ["--output_dir", str(tmp_path / name / "weights"), "--checkpoint_dir", str(tmp_path / name / "ckpt")]
    folders += ["--docs_dir", str(tmp_path / name / "docs")]
    sizes = "--num_renders 12 --max_steps 2 --batch_size 4 --warmup_steps 1 --widths 4 4 8 8"
    sizes += " --eval_num_identities 20 --eval_renders_per_identity 1 --eval_negatives 2 --log_every 1"
    return train_keypoints, train_keypoints.parse_args(["--sides", "train", *folders, *sizes.split(), *extra])


def test_training_script_runs_two_steps_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    script, args = _train_args(tmp_path, "straight")
    report = script.main(args)
    weights = tmp_path / "straight" / "weights" / "train.safetensors"
    assert weights.is_file() and report["sides"]["train"]["steps"] == 2
    saved = json.loads((tmp_path / "straight" / "docs" / "keypoints.json").read_text())
    assert saved["evaluation"]["num_identities"] == 2 and "held_out_64px" in saved["sides"]["train"]
    assert "train_keypoints.py --sides train" in (tmp_path / "straight" / "docs" / "keypoints.md").read_text()

    # interrupted after 1 step, then resumed: same weights as the uninterrupted run
    _, args = _train_args(tmp_path, "resumed", "--stop_after_steps", "1")
    assert script.main(args)["unfinished_sides"] == ["train"]
    state = json.loads((tmp_path / "resumed" / "ckpt" / "train" / "state.json").read_text())
    assert state["step"] == 1 and not (tmp_path / "resumed" / "weights" / "train.safetensors").exists()
    _, args = _train_args(tmp_path, "resumed")
    assert script.main(args)["sides"]["train"]["steps"] == 2
    a, b = load_file(str(weights)), load_file(str(tmp_path / "resumed" / "weights" / "train.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # a changed setting refuses to resume
    _, args = _train_args(tmp_path, "resumed", "--learning_rate", "1e-2")
    with pytest.raises(ValueError, match=r"different settings \(\['learning_rate'\]\)"):
        script.main(args)
