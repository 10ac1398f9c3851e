"""Face front-end tests: tiny ONNX stand-ins through insightface's real code paths, and a real photo."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
from face_standins import ASTRONAUT_KPS, make_arcface_standin, make_scrfd_standin, write_model_pack

from emojidiff_pipeline import face as face_module
from emojidiff_pipeline.face import FaceAnalyzer, align_face, face_mask, to_rgb_array

cv2 = pytest.importorskip("cv2")
insightface = pytest.importorskip("insightface")
ort = pytest.importorskip("onnxruntime")
from insightface.utils import face_align  # noqa: E402

LOGGER = "emojidiff_pipeline.face"

# Two faces on a 256x256 image: a big one and a small one (insightface order: eyes, nose, mouth corners).
BIG_KPS = face_align.arcface_dst * 1.2 + np.array([60.0, 40.0], dtype=np.float32)
SMALL_KPS = face_align.arcface_dst * 0.5 + np.array([150.0, 10.0], dtype=np.float32)
# One face on a 240x320 (H x W) image, for the retry detector (letterboxed at 640: det scale 2; at 320: 1).
RETRY_IMAGE_SIZE = (240, 320)
RETRY_KPS = face_align.arcface_dst * 0.8 + np.array([110.0, 60.0], dtype=np.float32)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()  # (512, 512, 3) uint8 RGB


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("insightface_root")
    out = tmp_path_factory.mktemp("standins")
    pack = write_model_pack(root, "buffalo_l", [{"kps": ASTRONAUT_KPS}], image_size=(512, 512))
    return {
        "root": root,
        "pack": pack,
        "recognizer": pack / "w600k_r50.onnx",
        "det_astronaut": pack / "det_10g.onnx",
        # Dynamic input; fires only when the detection input is at most 320 px: found at the first retry.
        "det_retry": make_scrfd_standin(
            out / "det_retry.onnx",
            [{"kps": RETRY_KPS}],
            image_size=RETRY_IMAGE_SIZE,
            input_size=None,
            max_input_side=320,
        ),
        "det_two": make_scrfd_standin(
            out / "det_two.onnx",
            [{"kps": SMALL_KPS, "score": 0.95}, {"kps": BIG_KPS, "score": 0.8}],
            image_size=(256, 256),
        ),
        "det_none": make_scrfd_standin(out / "det_none.onnx", [], input_size=None),
    }


@pytest.fixture(scope="module")
def pack_analyzer(models) -> FaceAnalyzer:
    return FaceAnalyzer("buffalo_l", root=models["root"])


def _reference_embedding(recognizer_path: Path, crop_rgb: np.ndarray) -> np.ndarray:
    """Run the recognizer ONNX directly on an aligned RGB crop with ArcFace preprocessing; L2-normalised."""
    session = ort.InferenceSession(str(recognizer_path), providers=["CPUExecutionProvider"])
    blob = ((crop_rgb.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]  # (1, 3, 112, 112)
    (embedding,) = session.run(None, {"input.1": blob})
    embedding = embedding[0]
    return embedding / np.linalg.norm(embedding)


def _gaussian_dots(shape: tuple[int, int], points: np.ndarray, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    image = np.zeros(shape, dtype=np.float64)
    for x, y in points:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.repeat((np.clip(image, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroid(gray: np.ndarray, centre: np.ndarray, radius: int) -> np.ndarray:
    x0, y0 = np.round(centre).astype(int)
    window = gray[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1].astype(np.float64)
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()


# ---------------------------------------------------------------------------------------------------------------
# Model pack loading, embeddings
# ---------------------------------------------------------------------------------------------------------------


def test_pack_loads_through_face_analysis_and_embedding_matches_onnx(pack_analyzer, models, astronaut):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    assert isinstance(pack_analyzer.detector, SCRFD)
    assert isinstance(pack_analyzer.recognizer, ArcFaceONNX)
    assert pack_analyzer.model_dir == models["pack"].resolve()

    faces = pack_analyzer.detect(PIL.Image.fromarray(astronaut))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].kps, ASTRONAUT_KPS, atol=1e-3)
    assert faces[0].det_score == pytest.approx(0.9, abs=1e-5)

    embedding = pack_analyzer.identity_embedding(PIL.Image.fromarray(astronaut))
    assert embedding.shape == (512,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(embedding, pack_analyzer.identity_embedding(astronaut))  # PIL == ndarray input

    crop = face_align.norm_crop(astronaut, ASTRONAUT_KPS, image_size=112)
    np.testing.assert_allclose(embedding, _reference_embedding(models["recognizer"], crop), atol=1e-5)
    # The stand-in is channel-order sensitive, so a BGR/RGB mix-up would have been caught.
    assert np.abs(embedding - _reference_embedding(models["recognizer"], crop[..., ::-1].copy())).max() > 1e-2


def test_missing_model_pack_names_folder_and_files_and_downloads_nothing(tmp_path, monkeypatch):
    import insightface.app.face_analysis
    import insightface.utils.storage

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(insightface.utils.storage, "download", no_download)
    monkeypatch.setattr(insightface.app.face_analysis, "ensure_available", no_download)
    root = tmp_path / "insightface_home"
    with pytest.raises(FileNotFoundError) as info:
        FaceAnalyzer("buffalo_l", root=root)
    message = str(info.value)
    assert str(root / "models" / "buffalo_l") in message
    assert "det_10g.onnx" in message and "w600k_r50.onnx" in message
    assert "Nothing is downloaded" in message and "does not exist" in message
    assert not root.exists()  # no empty folder left behind

    (root / "models" / "antelopev2").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no \.onnx files.*glintr100\.onnx"):
        FaceAnalyzer("antelopev2", root=root)


def test_model_pack_without_detector_is_refused(tmp_path, models):
    folder = tmp_path / "models" / "rec_only"
    folder.mkdir(parents=True)
    shutil.copy(models["recognizer"], folder / "w600k_r50.onnx")
    with pytest.raises(FileNotFoundError, match=r"no detection model.*w600k_r50\.onnx"):
        FaceAnalyzer("rec_only", root=tmp_path)


def test_identity_embedding_without_recognizer_is_refused(models, astronaut):
    analyzer = FaceAnalyzer.from_models(models["det_astronaut"], None)
    with pytest.raises(ValueError, match=r"`identity_image`.*no recognizer"):
        analyzer.identity_embedding(astronaut)


def test_from_models_checks_files(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="`detector` file not found"):
        FaceAnalyzer.from_models(tmp_path / "missing.onnx", None)
    with pytest.raises(ValueError, match=r"`detector` .* is not an SCRFD detector.*ArcFaceONNX"):
        FaceAnalyzer.from_models(models["recognizer"], None)
    with pytest.raises(ValueError, match=r"`recognizer` .* is not an ArcFace recognizer.*SCRFD"):
        FaceAnalyzer.from_models(models["det_astronaut"], models["det_astronaut"])
    with pytest.raises(ValueError, match="`detector` must be"):
        FaceAnalyzer.from_models(42, None)


# ---------------------------------------------------------------------------------------------------------------
# Alignment and the expression crop
# ---------------------------------------------------------------------------------------------------------------


def test_align_face_on_real_photo(astronaut):
    crop = align_face(astronaut, ASTRONAUT_KPS, size=112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8

    # The 4-dof similarity fit puts the photo's landmarks on the template up to the face's own proportions
    # (a wide smile): residuals of a few px at 112, the eyes' midpoint within ~2 px.
    matrix = face_align.estimate_norm(ASTRONAUT_KPS, 112)
    aligned = ASTRONAUT_KPS @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(aligned - face_align.arcface_dst).max() < 5.0
    assert np.linalg.norm(aligned[:2].mean(0) - face_align.arcface_dst[:2].mean(0)) < 2.5

    # Face-like: skin in the centre (cheeks/nose), darker eyes than the skin below them, teeth brighter than skin.
    crop = crop.astype(np.float64)
    skin = crop[60:80, 45:68].reshape(-1, 3).mean(0)
    assert skin[0] > 130 and skin[0] > skin[1] > skin[2]
    gray = crop.mean(2)
    for x, y in face_align.arcface_dst[:2]:
        eye = gray[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3].mean()
        below = gray[int(y) + 12 : int(y) + 17, int(x) - 2 : int(x) + 3].mean()
        assert eye < below - 30
    mouth = face_align.arcface_dst[3:].mean(0)
    teeth = gray[int(mouth[1]) - 1 : int(mouth[1]) + 5, int(mouth[0]) - 10 : int(mouth[0]) + 11].mean()
    assert teeth > gray[60:80, 45:68].mean()


@pytest.mark.parametrize("size", [112, 224])
def test_align_face_puts_landmarks_on_template(size):
    # Template-shaped landmarks under a known similarity (scale, rotation, shift), drawn as Gaussian dots.
    angle = np.deg2rad(20.0)
    rotation = 1.7 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = (face_align.arcface_dst @ rotation.T + np.array([90.0, 40.0])).astype(np.float32)
    image = _gaussian_dots((300, 320), kps, sigma=2.0)
    crop = align_face(image, kps, size=size)
    template = face_align.arcface_dst * (size / 112)
    for point in template:
        assert np.linalg.norm(_centroid(crop.mean(2), point, radius=size // 28) - point) < 1.0


def test_expression_crop_and_mask(pack_analyzer, astronaut):
    crop, mask = pack_analyzer.expression_crop(astronaut)
    assert isinstance(crop, PIL.Image.Image) and crop.mode == "RGB" and crop.size == (224, 224)
    np.testing.assert_array_equal(np.asarray(crop), align_face(astronaut, ASTRONAUT_KPS, 224))
    assert mask.shape == (224, 224) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert mask[112, 112] > 0.99
    assert max(mask[0, 0], mask[0, -1], mask[-1, 0], mask[-1, -1]) < 0.01

    crop112, mask112 = pack_analyzer.expression_crop(astronaut, size=112)
    assert crop112.size == (112, 112) and mask112.shape == (112, 112)
    with pytest.raises(ValueError, match=r"`size` must be a multiple of 112 or 128.*100"):
        pack_analyzer.expression_crop(astronaut, size=100)


@pytest.mark.parametrize("size", [112, 224])
def test_face_mask_covers_the_aligned_landmarks(size):
    mask = face_mask(size)
    template = face_align.arcface_dst * (size / 112)
    for x, y in template:
        assert mask[int(round(y)), int(round(x))] > 0.9
    brows = template[:2].mean(0) - [0, 0.3 * (template[3:].mean(0) - template[:2].mean(0))[1]]
    assert mask[int(brows[1]), int(brows[0])] > 0.9
    assert mask[0].max() < 0.05 and mask[:, 0].max() < 0.05 and mask[:, -1].max() < 0.05


# ---------------------------------------------------------------------------------------------------------------
# Detection policy: retries, no face, several faces
# ---------------------------------------------------------------------------------------------------------------


def test_detection_retries_at_smaller_sizes(models, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    analyzer = FaceAnalyzer.from_models(models["det_retry"], None, det_size=(640, 640), min_det_size=160)
    image = np.full((*RETRY_IMAGE_SIZE, 3), 128, dtype=np.uint8)
    faces = analyzer.detect(image)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].kps, RETRY_KPS, atol=1e-3)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "Detection at 640 found 0 face(s)." in messages and "Detection at 320 found 1 face(s)." in messages

    no_retry = FaceAnalyzer.from_models(models["det_retry"], None, det_size=(640, 640), min_det_size=640)
    assert no_retry.detect(image) == []
    with pytest.raises(ValueError, match=r"No face found in `image` \(tried det sizes 640\)"):
        no_retry.select(no_retry.detect(image), "image")


def test_no_face_error_names_the_input(models):
    analyzer = FaceAnalyzer.from_models(models["det_none"], models["recognizer"])
    image = np.zeros((512, 512, 3), dtype=np.uint8)
    assert analyzer.detect(image) == []
    with pytest.raises(ValueError, match=r"No face found in `expression_image` \(tried det sizes 640, 320, 160\)"):
        analyzer.expression_crop(image)
    with pytest.raises(ValueError, match=r"No face found in `identity_image`"):
        analyzer.identity_embedding(image)


def test_several_faces_take_the_largest_and_warn(models, caplog):
    analyzer = FaceAnalyzer.from_models(models["det_two"], None)
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    faces = analyzer.detect(image)
    assert len(faces) == 2
    np.testing.assert_allclose(faces[0].kps, BIG_KPS, atol=1e-3)  # largest first, though its score is lower
    np.testing.assert_allclose(faces[1].kps, SMALL_KPS, atol=1e-3)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        crop, _ = analyzer.expression_crop(image)
    (record,) = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert "Found 2 faces in `expression_image`" in record.getMessage()
    assert "the largest" in record.getMessage() and "bbox" in record.getMessage()
    np.testing.assert_array_equal(np.asarray(crop), align_face(image, BIG_KPS, 224))


def test_face_policy_index(models, caplog):
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    analyzer = FaceAnalyzer.from_models(models["det_two"], None, face_policy=1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        face = analyzer.select(analyzer.detect(image), "expression_image")
    np.testing.assert_allclose(face.kps, SMALL_KPS, atol=1e-3)
    assert "index 1" in caplog.text

    out_of_range = FaceAnalyzer.from_models(models["det_two"], None, face_policy=2)
    with pytest.raises(ValueError, match=r"`face_policy`=2 but only 2 face\(s\) were found in `expression_image`"):
        out_of_range.expression_crop(image)


def test_known_keypoint_detector(models, pack_analyzer, astronaut):
    from face_standins import bbox_from_kps

    calls = []

    def detector(image_rgb: np.ndarray) -> list:
        calls.append(image_rgb.shape)
        return [(bbox_from_kps(ASTRONAUT_KPS), ASTRONAUT_KPS, 0.99)]

    analyzer = FaceAnalyzer.from_models(detector, models["recognizer"])
    (face,) = analyzer.detect(astronaut)
    np.testing.assert_array_equal(face.kps, ASTRONAUT_KPS)
    assert calls == [(512, 512, 3)]
    np.testing.assert_allclose(
        analyzer.identity_embedding(astronaut), pack_analyzer.identity_embedding(astronaut), atol=1e-5
    )
    crop, _ = analyzer.expression_crop(astronaut, size=112)
    np.testing.assert_array_equal(np.asarray(crop), align_face(astronaut, ASTRONAUT_KPS, 112))

    empty = FaceAnalyzer.from_models(lambda image: [], None)
    with pytest.raises(ValueError, match=r"No face found in `expression_image` \(the known-keypoint detector"):
        empty.expression_crop(astronaut)
    broken = FaceAnalyzer.from_models(lambda image: [(np.zeros(4), np.zeros((4, 2)), 1.0)], None)
    with pytest.raises(ValueError, match=r"kps .*shape \(5, 2\).*\(4, 2\)"):
        broken.detect(astronaut)


# ---------------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------------


def test_to_rgb_array(astronaut):
    np.testing.assert_array_equal(to_rgb_array(PIL.Image.fromarray(astronaut), "image"), astronaut)
    rgba = to_rgb_array(PIL.Image.fromarray(astronaut).convert("RGBA"), "image")
    assert rgba.shape == (512, 512, 3) and rgba.dtype == np.uint8
    with pytest.raises(
        ValueError, match=r"`identity_image` must be an RGB image array of shape \(H, W, 3\).*\(4, 4\)"
    ):
        to_rgb_array(np.zeros((4, 4), dtype=np.uint8), "identity_image")
    with pytest.raises(ValueError, match=r"`expression_image`.*\(4, 4, 4\)"):
        to_rgb_array(np.zeros((4, 4, 4), dtype=np.uint8), "expression_image")
    with pytest.raises(ValueError, match=r"`image` must be a uint8.*float32"):
        to_rgb_array(np.zeros((4, 4, 3), dtype=np.float32), "image")
    with pytest.raises(ValueError, match=r"`image` must be a PIL.Image.*torch.Tensor"):
        to_rgb_array(torch.zeros(4, 4, 3, dtype=torch.uint8), "image")
    with pytest.raises(ValueError, match=r"`image` must be a PIL.Image.*builtins.str"):
        to_rgb_array("face.png", "image")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"det_size": (600, 600)}, r"`det_size` values must be positive multiples of 32.*600"),
        ({"det_size": 640}, r"`det_size` must be a pair of ints.*640"),
        ({"face_policy": "smallest"}, r"`face_policy` must be one of \['largest'\].*'smallest'"),
        ({"face_policy": -1}, r"`face_policy` must be 'largest' or a non-negative int.*-1"),
        ({"face_policy": True}, r"`face_policy`.*True"),
        ({"min_det_size": 0}, r"`min_det_size` must be a positive int.*0"),
        ({"min_det_size": 1024}, r"`min_det_size` \(1024\) must not exceed.*\(640, 640\)"),
        ({"det_thresh": 1.5}, r"`det_thresh` must be a float in \(0, 1\).*1.5"),
        ({"providers": "CPUExecutionProvider"}, r"`providers` must be a non-empty sequence"),
    ],
)
def test_constructor_arguments_are_checked(kwargs, pattern, tmp_path):
    with pytest.raises(ValueError, match=pattern):
        FaceAnalyzer.from_models(lambda image: [], None, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        FaceAnalyzer("buffalo_l", root=tmp_path, **kwargs)  # checked before looking for the pack


def test_align_face_arguments_are_checked(astronaut):
    with pytest.raises(ValueError, match=r"`kps` must be 5 landmarks.*\(4, 2\)"):
        align_face(astronaut, ASTRONAUT_KPS[:4], 112)
    with pytest.raises(ValueError, match="`kps` are degenerate"):
        align_face(astronaut, np.zeros((5, 2)), 112)
    with pytest.raises(ValueError, match=r"`size` must be a multiple of 112 or 128.*200"):
        align_face(astronaut, ASTRONAUT_KPS, 200)


def test_module_imports_and_errors_clearly_without_insightface(monkeypatch, models):
    for name in ("insightface", "insightface.app", "insightface.model_zoo", "insightface.utils.face_align"):
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("emojidiff_pipeline._face_without_insightface", face_module.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing needs only numpy and Pillow

    assert module.face_mask(112).shape == (112, 112)
    assert module.to_rgb_array(np.zeros((2, 2, 3), dtype=np.uint8), "image").shape == (2, 2, 3)
    for build in (
        lambda: module.FaceAnalyzer.from_models(lambda image: [], None),
        lambda: module.FaceAnalyzer("buffalo_l", root=models["root"]),
    ):
        with pytest.raises(ImportError) as info:
            build()
        assert 'pip install "emojidiff_pipeline[face]"' in str(info.value)
        assert "pip install --no-deps insightface==2.1" in str(info.value)


def test_recognizer_standin_routes_as_arcface(tmp_path):
    from insightface.model_zoo import get_model

    model = get_model(str(make_arcface_standin(tmp_path / "rec.onnx", seed=1)), providers=["CPUExecutionProvider"])
    assert type(model).__name__ == "ArcFaceONNX" and model.input_size == (112, 112)
    assert model.get_feat(np.zeros((112, 112, 3), dtype=np.uint8)).shape == (1, 512)
