"""Instruments trained on renders: the shipped files load (torch and insightface), agree, and measure something real
on held-out identities; the training script runs a few steps at toy size and resumes; bad inputs get clear errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emojidiff_synthetic import EXPRESSION_FIELDS, STYLE_CHOICES, Expression, Identity, Pose, Style, render
from emojidiff_synthetic import instruments as ins
from emojidiff_synthetic.instruments.files import _load_instrument
from emojidiff_synthetic.world import is_held_out

insightface = pytest.importorskip("insightface")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "synthetic" / "scripts"))
import train_instruments  # noqa: E402

HELD_OUT = [i for i in range(200) if is_held_out(i)][:6]  # 9, 19, ..., 59


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def renders() -> dict[str, np.ndarray]:
    """Two renders of each of 6 held-out identities, random expression / style / pose (arrays as in render_set)."""
    return dict(ins.render_set(HELD_OUT, 2, seed=7))


def _pair_scores(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    same = labels[iu[0]] == labels[iu[1]]
    return scores[iu][same], scores[iu][~same]


# ---------------------------------------------------------------------------------------------------------------
# Shipped identity encoders: torch, ONNX through insightface, FaceAnalyzer
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ins.SIDES)
def test_identity_onnx_loads_as_arcface_and_matches_torch(side, renders):
    from insightface.model_zoo import get_model

    path = ins.identity_onnx_path(side)
    model = get_model(str(path), providers=["CPUExecutionProvider"])
    assert type(model).__name__ == "ArcFaceONNX"
    assert (model.input_mean, model.input_std) == (127.5, 127.5)  # normalised in the graph's caller, RGB
    assert model.input_size == (112, 112) and model.input_name == "input.1"

    encoder = ins.load_identity_encoder(side)
    assert not encoder.training
    faces = ins.align_faces(renders["images"], renders["keypoints"])
    onnx_emb = model.get_feat(list(faces[:, :, :, ::-1]))  # insightface takes BGR and swaps to RGB
    torch_emb = ins.embed_identities(encoder, renders["images"], renders["keypoints"])
    onnx_emb = onnx_emb / np.linalg.norm(onnx_emb, axis=1, keepdims=True)
    assert onnx_emb.shape == torch_emb.shape == (len(faces), 512)
    assert (onnx_emb * torch_emb).sum(1).min() > 0.999


@pytest.mark.parametrize("side", ins.SIDES)
def test_face_analyzer_with_shipped_recognizer(side, renders):
    from emojidiff_pipeline.face import FaceAnalyzer

    current = {}

    def known_keypoints(image_rgb):
        kps = current["kps"]
        return [(np.concatenate([kps.min(0), kps.max(0)]), kps, 1.0)]

    analyzer = FaceAnalyzer.from_models(detector=known_keypoints, recognizer=ins.identity_onnx_path(side))
    embs = []
    for image, kps in zip(renders["images"], renders["keypoints"]):
        current["kps"] = kps
        e = analyzer.identity_embedding(image)
        assert e.shape == (512,) and e.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(e), 1.0, atol=1e-5)
        embs.append(e)
    embs = np.stack(embs)
    genuine, impostor = _pair_scores(embs, renders["label"])
    assert genuine.mean() > impostor.mean() + 0.3
    assert np.median(genuine) > np.percentile(impostor, 95)
    # The same through the torch module (the differentiable version of the train-side recognizer).
    torch_emb = ins.embed_identities(ins.load_identity_encoder(side), renders["images"], renders["keypoints"])
    assert (torch_emb * embs).sum(1).min() > 0.999


def test_train_side_identity_encoder_is_differentiable(renders):
    encoder = ins.load_identity_encoder("train")
    assert all(not p.requires_grad for p in encoder.parameters())
    x = ins.preprocess_faces(renders["images"][:2], renders["keypoints"][:2]).requires_grad_(True)
    emb = torch.nn.functional.normalize(encoder(x), dim=1)
    loss = 1.0 - (emb[0] * emb[1]).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_preprocess_face_matches_arcface_convention(renders):
    image, kps = renders["images"][0], renders["keypoints"][0]
    x = ins.preprocess_face(image, kps)
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32
    crop = ins.align_faces(image[None], kps[None])[0]
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), (crop.astype(np.float32) - 127.5) / 127.5, atol=1e-6)
    assert torch.equal(ins.preprocess_faces(renders["images"][:1], renders["keypoints"][:1])[0], x)


# ---------------------------------------------------------------------------------------------------------------
# Expression estimators and the style classifier
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ins.SIDES)
def test_expression_estimator_beats_baseline(side, renders):
    estimator = ins.load_expression_estimator(side)
    pred = ins.estimate_expressions(estimator, renders["images"], renders["keypoints"])
    assert pred.shape == (len(renders["images"]), len(EXPRESSION_FIELDS)) and pred.dtype == np.float32
    assert pred.min() >= 0.0 and pred.max() <= 1.0
    target = renders["expression"]
    rest = np.array([0.5 if f.startswith("gaze") else 0.0 for f in EXPRESSION_FIELDS], dtype=np.float32)
    model_mae = np.abs(pred - target).mean()
    baseline_mae = np.abs(rest - target).mean()  # "always the rest expression"
    assert model_mae < 0.5 * baseline_mae


def test_expression_estimator_reads_a_smile():
    estimator = ins.load_expression_estimator("eval")
    identity = Identity.from_seed(HELD_OUT[0])
    style = Style(background="teal", pattern="dotted", rendering="shaded", palette="natural")
    images, kps = [], []
    for expr in (Expression(), Expression(smile=1.0), Expression(eye_close_left=1.0, eye_close_right=1.0)):
        r = render(identity, expr, style, Pose())
        images.append(r.image)
        kps.append(r.keypoints)
    pred = ins.estimate_expressions(estimator, np.stack(images), np.stack(kps))
    smile, close_l = EXPRESSION_FIELDS.index("smile"), EXPRESSION_FIELDS.index("eye_close_left")
    assert pred[1, smile] > pred[0, smile] + 0.5
    assert pred[2, close_l] > pred[0, close_l] + 0.5


def test_style_classifier_beats_majority(renders):
    classifier = ins.load_style_classifier()
    out = classifier(ins.preprocess_style(renders["images"]))
    assert set(out) == set(ins.STYLE_HEADS)
    for head, logits in out.items():
        assert logits.shape == (len(renders["images"]), len(STYLE_CHOICES[head]))
    result = ins.classify_styles(classifier, renders["images"])
    for i, head in enumerate(ins.STYLE_HEADS):
        truth = [STYLE_CHOICES[head][j] for j in renders["style"][:, i]]
        accuracy = np.mean([a == b for a, b in zip(result["labels"][head], truth)])
        majority = np.bincount(renders["style"][:, i]).max() / len(truth)
        assert accuracy >= max(0.75, majority + 0.1), head
        np.testing.assert_allclose(result["probs"][head].sum(1), 1.0, atol=1e-5)


def test_preprocess_style_resizes_square_images(renders):
    big = np.repeat(np.repeat(renders["images"][:2], 2, axis=1), 2, axis=2)  # (2, 128, 128, 3)
    x = ins.preprocess_style(list(big))
    assert x.shape == (2, 3, 64, 64)
    torch.testing.assert_close(x, ins.preprocess_style(renders["images"][:2]))


def test_shipped_assets_stay_small():
    files = sorted(ins.ASSET_DIR.iterdir())
    names = {f.name for f in files}
    for side in ins.SIDES:
        assert {f"identity_{side}.onnx", f"identity_{side}.safetensors", f"expression_{side}.safetensors"} <= names
    assert "style.safetensors" in names
    assert sum(f.stat().st_size for f in files) < 8 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(tmp_path, renders):
    with pytest.raises(ValueError, match="`side` must be one of"):
        ins.load_identity_encoder("test")
    with pytest.raises(ValueError, match="`side` must be one of"):
        ins.identity_onnx_path("both")
    with pytest.raises(ValueError, match="`side` must be one of"):
        ins.load_expression_estimator(None)
    with pytest.raises(FileNotFoundError, match="train_instruments.py"):
        ins.load_style_classifier(asset_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="identity_eval"):
        ins.identity_onnx_path("eval", asset_dir=tmp_path)
    with pytest.raises(ValueError, match=r"shape \(5, 2\)"):
        ins.preprocess_face(renders["images"][0], np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        ins.preprocess_face(renders["images"][0][:, :, 0], renders["keypoints"][0])
    with pytest.raises(ValueError, match="uint8"):
        ins.preprocess_face(renders["images"][0].astype(np.float32), renders["keypoints"][0])
    with pytest.raises(ValueError, match="a batch"):
        ins.preprocess_faces(renders["images"][0], renders["keypoints"][:1])
    with pytest.raises(ValueError, match=r"\(N, 5, 2\)"):
        ins.preprocess_faces(renders["images"][:2], renders["keypoints"][:1])
    with pytest.raises(ValueError, match="square"):
        ins.preprocess_style([np.zeros((64, 80, 3), np.uint8)])
    encoder = ins.load_identity_encoder("eval")
    with pytest.raises(ValueError, match=r"\(N, 3, 112, 112\)"):
        encoder(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        ins.load_style_classifier()(torch.zeros(1, 3, 112, 112))
    # A file of another kind is refused by name.
    with pytest.raises(ValueError, match="not a identity_encoder"):
        _load_instrument(ins.ASSET_DIR / "style.safetensors", "identity_encoder")


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ins.ExpressionEstimator("vgg", widths=(8, 8, 8), depths=(1, 1, 1), hidden=8).eval()
    ins.save_instrument(model, tmp_path / "expression_train.safetensors", dtype=torch.float32)
    loaded = ins.load_expression_estimator("train", asset_dir=tmp_path)
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.config == model.config


def test_tar_at_far_on_known_scores():
    # Two identities far apart, tight clusters: every genuine pair beats every impostor pair.
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:2]
    emb = np.concatenate([centres[i] + 0.01 * rng.normal(size=(5, 4)) for i in range(2)])
    out = ins.tar_at_far(emb, np.repeat([0, 1], 5), fars=(1e-3,))
    assert out["tar@far=0.001"] == 1.0
    assert out["genuine_pairs"] == 20 and out["impostor_pairs"] == 25


# ---------------------------------------------------------------------------------------------------------------
# The training script at toy scale: runs, exports, reports, resumes
# ---------------------------------------------------------------------------------------------------------------


def _script_args(tmp_path, steps: int) -> list[str]:
    return [
        "--which",
        "identity_train,expression_eval,style",
        "--out",
        str(tmp_path / "out"),
        "--work_dir",
        str(tmp_path / "work"),
        "--docs_dir",
        str(tmp_path / "docs"),
        "--identities",
        "4",
        "--photos_per_identity",
        "2",
        "--num_collection_identities",
        "30",
        "--eval_photos_per_identity",
        "2",
        "--identity_steps",
        str(steps),
        "--expression_steps",
        str(steps),
        "--style_steps",
        str(steps),
        "--batch_size",
        "4",
        "--checkpoint_minutes",
        "0",
    ]


def test_training_script_runs_and_resumes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emojidiff_synthetic.instruments")
    entries = train_instruments.main(train_instruments.parse_args(_script_args(tmp_path, 2)))
    assert set(entries) == {"identity_train", "expression_eval", "style"}
    for name in entries:
        meta = json.loads((tmp_path / "work" / name / "checkpoint" / "state.json").read_text())
        assert meta["step"] == 2
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "identity_train.safetensors",
        "identity_train.onnx",
        "expression_eval.safetensors",
        "style.safetensors",
    }
    report = json.loads((tmp_path / "docs" / "instruments.json").read_text())
    assert report["instruments"]["identity_train"]["result"]["onnx_vs_torch_min_cosine"] > 0.999
    assert report["instruments"]["style"]["training_renders"] == 8
    assert "expression_eval" in (tmp_path / "docs" / "instruments.md").read_text()
    ins.load_identity_encoder("train", asset_dir=tmp_path / "out")  # the export loads

    caplog.clear()
    entries = train_instruments.main(train_instruments.parse_args(_script_args(tmp_path, 3)))
    assert "[identity_train] resuming from step 2" in caplog.text
    for name in entries:
        assert entries[name]["resumed_from_step"] == 2
        assert json.loads((tmp_path / "work" / name / "checkpoint" / "state.json").read_text())["step"] == 3

    # A changed set-up is refused instead of silently mixing checkpoints.
    args = _script_args(tmp_path, 3)
    args[args.index("--batch_size") + 1] = "2"
    with pytest.raises(ValueError, match="another --work_dir"):
        train_instruments.main(train_instruments.parse_args(args))


def test_training_script_rejects_unknown_instrument():
    with pytest.raises(SystemExit):
        train_instruments.parse_args(["--which", "identity_test"])


def test_synthetic_package_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import emojidiff_synthetic as s\n"
        "assert 'emojidiff_synthetic.instruments' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
