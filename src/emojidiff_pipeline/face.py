"""Face front-end: detection, 5-point alignment, identity embeddings and the expression crop + mask.

Built on insightface (``FaceAnalysis``, ``model_zoo.get_model``, ``face_align.norm_crop``), which is imported
lazily: importing this module needs only numpy and Pillow. Model packs are never downloaded; a missing pack
raises an error that says where its files go.

Image convention: every public function takes RGB (``PIL.Image`` or ``np.ndarray`` [H, W, 3] uint8) and converts to
BGR internally for insightface.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .face_geometry import (
    EXPRESSION_CROPS,
    _check_crop_size,
    _check_geometry,
    _check_kps,
    align_expression_face,
    align_face,
    expression_mask,
    face_mask,
    masked_template,
    to_rgb_array,
)
from .face_loading import (
    check_det_size,
    check_face_policy,
    check_providers,
    find_model_dir,
    import_insightface,
    load_onnx,
    pack_help,
)
from .recognizers import check_face_recognizer, is_face_recognizer, recognizer_info

logger = logging.getLogger(__name__)

__all__ = [
    "EXPRESSION_CROPS",
    "FaceAnalyzer",
    "align_expression_face",
    "align_face",
    "expression_mask",
    "face_mask",
    "masked_template",
    "to_rgb_array",
]

_REQUIRED_TASKS = ("detection", "recognition")


# ----------------------------------------------------------------------------------------------------------------
# FaceAnalyzer
# ----------------------------------------------------------------------------------------------------------------


def _format_size(size: tuple[int, int]) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def _bbox_area(face: Any) -> float:
    x1, y1, x2, y2 = np.asarray(face.bbox, dtype=np.float64)[:4]
    return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


class FaceAnalyzer:
    """Face detection, 5-point alignment and identity embeddings on an insightface model pack.

    Loads ``<root>/models/<name>/*.onnx`` through insightface's ``FaceAnalysis`` (detection + recognition only)
    and never downloads anything. Use :meth:`from_models` to build from explicit parts (an SCRFD onnx, an ArcFace
    onnx, or a known-keypoint callable).

    Args:
        name: model pack name (a folder under ``<root>/models``), or a path to a pack folder.
        root: insightface root folder.
        providers: onnxruntime execution providers.
        det_size: detection input size (width, height), positive multiples of 32.
        min_det_size: smallest detection side tried when retrying at halved sizes (no face found).
        det_thresh: detection score threshold in (0, 1).
        face_policy: which face to use when several are found: ``"largest"`` or an int index into the
            largest-first list.
    """

    def __init__(
        self,
        name: str = "buffalo_l",
        root: str | os.PathLike = "~/.insightface",
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        det_size: tuple[int, int] = (640, 640),
        min_det_size: int = 160,
        det_thresh: float = 0.5,
        face_policy: str | int = "largest",
    ):
        self._configure(det_size, min_det_size, det_thresh, face_policy)
        providers = check_providers(providers)
        if not isinstance(name, (str, os.PathLike)) or not str(name):
            raise ValueError(f"`name` must be a model pack name such as 'buffalo_l', but got {name!r}.")
        if not isinstance(root, (str, os.PathLike)):
            raise ValueError(f"`root` must be a folder path, but got {root!r}.")  # noqa: TRY004
        model_dir = find_model_dir(str(name), root)  # raises before insightface could try a download

        import_insightface()
        from insightface.app import FaceAnalysis

        try:
            # A folder path as `name` makes FaceAnalysis load it directly (no download path is taken).
            app = FaceAnalysis(
                name=str(model_dir), root=str(root), allowed_modules=list(_REQUIRED_TASKS), providers=providers
            )
        except AssertionError:
            app = None  # insightface asserts that it found a detector; reported below with the file list
        except Exception as err:
            raise RuntimeError(f"insightface could not load the model pack in {model_dir}: {err}") from err
        found = {} if app is None else dict(app.models)
        missing = ["detection"] if app is None else [task for task in _REQUIRED_TASKS if task not in found]
        if missing:
            files = sorted(p.name for p in model_dir.glob("*.onnx"))
            routed = ", ".join(f"{Path(m.model_file).name} -> {task}" for task, m in found.items()) or "nothing"
            raise FileNotFoundError(
                f"The model pack in {model_dir} has no {' and no '.join(missing)} model (files: {files}; "
                f"insightface recognised: {routed}). {pack_help(str(name))}"
            )
        self.model_dir: Path | None = model_dir
        self._setup(found["detection"], found["recognition"])

    @classmethod
    def from_models(
        cls,
        detector: str | os.PathLike | Any | Callable[[np.ndarray], list],
        recognizer: str | os.PathLike | Any | None,
        *,
        det_size: tuple[int, int] = (640, 640),
        min_det_size: int = 160,
        det_thresh: float = 0.5,
        face_policy: str | int = "largest",
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> FaceAnalyzer:
        """Build from explicit parts.

        Args:
            detector: a path to an SCRFD onnx, an insightface detection model object (``SCRFD``), or a
                :class:`~emojidiff_pipeline.face_models.protocols.FaceDetector` / known-keypoint callable
                ``detector(image_rgb [H, W, 3] uint8) -> [(bbox (4,), kps (5, 2), score)]`` (its faces are used as
                returned: no threshold, no retry), e.g. ``face_models.mediapipe_mesh.MediaPipeDetector()``.
            recognizer: a path to an ArcFace-shaped onnx (routed by ``insightface.model_zoo.get_model``), an
                insightface ``ArcFaceONNX`` object, a :class:`~emojidiff_pipeline.face_models.protocols.FaceRecognizer`
                (e.g. ``face_models.dlib_models.DlibRecognizer()``), or None (then :meth:`identity_embedding` raises).
        """
        analyzer = cls.__new__(cls)
        analyzer._configure(det_size, min_det_size, det_thresh, face_policy)
        providers = check_providers(providers)
        analyzer.model_dir = None

        if _is_path(detector):
            detector = load_onnx(detector, "detector", "detection", providers)
        elif hasattr(detector, "detect"):
            import_insightface()
        elif callable(detector):
            import_insightface()  # Face objects and alignment need it
        else:
            raise ValueError(
                "`detector` must be a path to an SCRFD .onnx, an insightface detection model or a callable "
                f"image_rgb -> [(bbox, kps, score)], but got {type(detector).__qualname__}."
            )

        if _is_path(recognizer):
            recognizer = load_onnx(recognizer, "recognizer", "recognition", providers)
        elif is_face_recognizer(recognizer):
            check_face_recognizer(recognizer)
        elif recognizer is not None and not (hasattr(recognizer, "get") and hasattr(recognizer, "input_size")):
            raise ValueError(
                "`recognizer` must be a path to an ArcFace-shaped .onnx, an insightface ArcFaceONNX object, a "
                "FaceRecognizer (name, embedding_dim, embed(image, kps); see emojidiff_pipeline.face_models) or None, "
                f"but got {type(recognizer).__qualname__}."
            )
        analyzer._setup(detector, recognizer)
        return analyzer

    # -- construction helpers --------------------------------------------------------------------------------

    def _configure(self, det_size: Any, min_det_size: Any, det_thresh: Any, face_policy: Any) -> None:
        self.det_size = check_det_size(det_size)
        if isinstance(min_det_size, bool) or not isinstance(min_det_size, (int, np.integer)) or min_det_size <= 0:
            raise ValueError(f"`min_det_size` must be a positive int, but got {min_det_size!r}.")
        if min_det_size > min(self.det_size):
            raise ValueError(
                f"`min_det_size` ({min_det_size}) must not exceed the smaller side of `det_size` {self.det_size}."
            )
        self.min_det_size = int(min_det_size)
        if isinstance(det_thresh, bool) or not isinstance(det_thresh, (int, float)) or not 0.0 < det_thresh < 1.0:
            raise ValueError(f"`det_thresh` must be a float in (0, 1), but got {det_thresh!r}.")
        self.det_thresh = float(det_thresh)
        self.face_policy = check_face_policy(face_policy)

    def _setup(self, detector: Any, recognizer: Any) -> None:
        self.detector = detector
        self.recognizer = recognizer
        self._known_keypoints = callable(detector) and not hasattr(detector, "detect")
        if not self._known_keypoints:
            detector.prepare(0, input_size=self.det_size, det_thresh=self.det_thresh)
        if recognizer is not None and not is_face_recognizer(recognizer):
            recognizer.prepare(0)
        self._det_sizes = self._detection_sizes()

    def _detection_sizes(self) -> list[tuple[int, int]]:
        """det_size, then halved sizes (multiples of 32) while the smaller side stays >= min_det_size."""
        if self._known_keypoints:
            return []
        fixed = getattr(self.detector, "static_input_size", None)
        if fixed is None and not hasattr(self.detector, "static_input_size"):
            shape = list(getattr(self.detector, "input_shape", None) or [])[2:4]
            if len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape):
                fixed = (shape[1], shape[0])
        if fixed is not None:
            fixed = (int(fixed[0]), int(fixed[1]))
            if fixed != self.det_size:
                logger.info(
                    "The detector has a fixed input size %s; `det_size`=%s and smaller retries are not used.",
                    fixed,
                    self.det_size,
                )
            return [fixed]
        sizes = [self.det_size]
        while True:
            w, h = ((v // 2) // 32 * 32 for v in sizes[-1])
            if min(w, h) < self.min_det_size or w <= 0 or h <= 0:
                return sizes
            sizes.append((w, h))

    def _tried(self) -> str:
        if self._known_keypoints:
            return f"the {getattr(self.detector, 'name', 'known-keypoint')} detector returned no face"
        return f"tried det sizes {', '.join(_format_size(s) for s in self._det_sizes)}"

    # -- detection -------------------------------------------------------------------------------------------

    def _detect_rgb(self, image_rgb: np.ndarray) -> list:
        from insightface.app.common import Face

        faces = []
        if self._known_keypoints:
            for bbox, kps, score in self._call_known_keypoints(image_rgb):
                faces.append(Face(bbox=bbox, kps=kps, det_score=score))
        else:
            image_bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
            for size in self._det_sizes:
                bboxes, kpss = self.detector.detect(image_bgr, input_size=size, max_num=0)
                logger.debug("Detection at %s found %d face(s).", _format_size(size), len(bboxes))
                if len(bboxes) == 0:
                    continue
                if kpss is None:
                    raise ValueError(
                        "The face detector returned no 5-point keypoints (needed for alignment); use an SCRFD model "
                        "with keypoint outputs (9 or 15 outputs), e.g. det_10g.onnx."
                    )
                for i in range(len(bboxes)):
                    faces.append(
                        Face(
                            bbox=np.asarray(bboxes[i, :4], dtype=np.float32),
                            kps=np.asarray(kpss[i], dtype=np.float32),
                            det_score=float(bboxes[i, 4]),
                        )
                    )
                break
        faces.sort(key=_bbox_area, reverse=True)
        return faces

    def _call_known_keypoints(self, image_rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        result = self.detector(image_rgb)
        if not isinstance(result, (list, tuple)):
            raise ValueError(  # noqa: TRY004
                f"The `detector` callable must return a list of (bbox, kps, score), but returned "
                f"{type(result).__qualname__}."
            )
        out = []
        for i, item in enumerate(result):
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise ValueError(
                    f"The `detector` callable must return (bbox, kps, score) tuples, but item {i} is {item!r}."
                )
            bbox = np.asarray(item[0], dtype=np.float32)
            if bbox.shape != (4,) or not np.all(np.isfinite(bbox)):
                raise ValueError(
                    f"The `detector` callable returned a bbox of shape {bbox.shape} for face {i}; expected finite "
                    "(x1, y1, x2, y2)."
                )
            kps = _check_kps(item[1], name=f"kps (face {i} from the `detector` callable)")
            out.append((bbox, kps, float(item[2])))
        return out

    def detect(self, image: PIL.Image.Image | np.ndarray, input_name: str = "image") -> list:
        """Detect faces in an RGB image; insightface ``Face`` objects (bbox (4,), kps (5, 2), det_score), largest
        first. Retries at halved detection sizes down to `min_det_size` before giving up; [] if none."""
        image_rgb = to_rgb_array(image, input_name)
        import_insightface()
        return self._detect_rgb(image_rgb)

    def select(self, faces: list, input_name: str) -> Any:
        """Apply the face policy to detected faces (largest first); raise if there is none to take."""
        if len(faces) == 0:
            raise ValueError(
                f"No face found in `{input_name}` ({self._tried()}). Pass an image with a clearly visible face."
            )
        faces = sorted(faces, key=_bbox_area, reverse=True)
        if self.face_policy == "largest":
            index, how = 0, "the largest"
        else:
            index, how = self.face_policy, f"index {self.face_policy} (largest first)"
            if index >= len(faces):
                raise ValueError(
                    f"`face_policy`={index} but only {len(faces)} face(s) were found in `{input_name}`; use an index "
                    f"below {len(faces)} or face_policy='largest'."
                )
        if len(faces) > 1:
            logger.warning(
                "Found %d faces in `%s`; using %s (face_policy=%r), bbox %s.",
                len(faces),
                input_name,
                how,
                self.face_policy,
                np.round(np.asarray(faces[index].bbox, dtype=np.float64), 1).tolist(),
            )
        return faces[index]

    # -- outputs ---------------------------------------------------------------------------------------------

    def _face(self, image_rgb: np.ndarray, input_name: str, kps: Any = None) -> Any:
        """The face to use: detected and selected by the policy, or built from known keypoints (5, 2)."""
        if kps is None:
            return self.select(self._detect_rgb(image_rgb), input_name)
        from insightface.app.common import Face

        kps = _check_kps(kps, name=f"kps of `{input_name}`")
        bbox = np.concatenate([kps.min(axis=0), kps.max(axis=0)]).astype(np.float32)
        return Face(bbox=bbox, kps=kps, det_score=1.0)

    def identity_embedding(
        self, image: PIL.Image.Image | np.ndarray, input_name: str = "identity_image", kps: Any = None
    ) -> np.ndarray:
        """ArcFace identity embedding of the selected face: (512,) float32, L2-normalised.

        `kps` (5, 2): known keypoints (e.g. from a detector run ahead of time); detection is then skipped."""
        if self.recognizer is None:
            raise ValueError(
                f"Cannot compute the identity embedding of `{input_name}`: this FaceAnalyzer has no recognizer. "
                "Build it with `FaceAnalyzer.from_models(detector, recognizer=<ArcFace .onnx>)` or from a model pack "
                "with a recognition model, or pass precomputed identity embeddings instead."
            )
        image_rgb = to_rgb_array(image, input_name)
        import_insightface()
        face = self._face(image_rgb, input_name, kps)
        if is_face_recognizer(self.recognizer):
            embedding = self.recognizer.embed(image_rgb, np.asarray(face.kps, dtype=np.float32))
        else:
            embedding = self.recognizer.get(np.ascontiguousarray(image_rgb[:, :, ::-1]), face)  # insightface wants BGR
        embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if self.embedding_dim is not None and embedding.shape[0] != self.embedding_dim:
            raise ValueError(
                f"The recognizer {self.recognizer_name!r} returned a {embedding.shape[0]}-d embedding "
                f"for `{input_name}`, but declares `embedding_dim`={self.embedding_dim}."
            )
        norm = float(np.linalg.norm(embedding))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError(f"The recognizer returned a zero or non-finite embedding for `{input_name}`.")
        return (embedding / norm).astype(np.float32)

    def reference_embedding(self, images: Sequence[Any], input_name: str = "identity_image", kps=None) -> np.ndarray:
        """The normed mean (512,) of the :meth:`identity_embedding` of several photos of one person (what the
        adapter's identity projection computes from a reference list); `kps`: None or one (5, 2) (or None) each."""
        if not images:
            raise ValueError(f"`{input_name}` is an empty list: give at least one reference photo.")
        kps = [None] * len(images) if kps is None else kps
        if len(kps) != len(images):
            raise ValueError(f"`kps` holds {len(kps)} keypoint sets for {len(images)} images of `{input_name}`.")
        embeds = [
            self.identity_embedding(im, f"{input_name}[{j}]", kps=k) for j, (im, k) in enumerate(zip(images, kps))
        ]
        mean = np.mean(embeds, axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)

    @property
    def recognizer_name(self) -> str | None:
        """The recognizer's name (a FaceRecognizer's `name`; ``insightface:<file stem>`` for ArcFace ONNX), or None."""
        return recognizer_info(self.recognizer)[0]

    @property
    def embedding_dim(self) -> int | None:
        """Width of :meth:`identity_embedding`'s output (None without a recognizer or when the model does not say)."""
        return recognizer_info(self.recognizer)[1]

    def expression_crop(
        self,
        image: PIL.Image.Image | np.ndarray,
        input_name: str = "expression_image",
        size: int = 224,
        kps: Any = None,
        geometry: str = "arcface",
    ) -> tuple[PIL.Image.Image, np.ndarray]:
        """Aligned face crop of the selected face and its soft face mask.

        Returns ``(crop, mask)``: crop a ``PIL.Image`` RGB of `size` x `size` (`size` a multiple of 112 or 128,
        e.g. 112 or 224), mask ``np.ndarray`` [size, size] float32 in [0, 1]. `geometry`, one of
        `EXPRESSION_CROPS`: ``"arcface"`` (5-point alignment onto the ArcFace template, :func:`face_mask`) or
        ``"eyes_nose"`` (:func:`align_expression_face`, :func:`expression_mask`); the adapter's config says which
        its image stream was trained with. `kps` (5, 2): known keypoints; detection is then skipped.
        """
        size = _check_crop_size(size)
        geometry = _check_geometry(geometry)
        image_rgb = to_rgb_array(image, input_name)
        import_insightface()
        face = self._face(image_rgb, input_name, kps)
        crop = align_expression_face(image_rgb, face.kps, size, geometry)
        return PIL.Image.fromarray(crop), expression_mask(size, geometry)

    def __repr__(self) -> str:
        if self._known_keypoints:
            detector = getattr(self.detector, "name", "known-keypoint callable")
        else:
            detector = Path(getattr(self.detector, "model_file", None) or type(self.detector).__name__).name
        recognizer = self.recognizer_name
        return (
            f"{type(self).__name__}(detector={detector!r}, recognizer={recognizer!r}, det_size={self.det_size}, "
            f"min_det_size={self.min_det_size}, det_thresh={self.det_thresh}, face_policy={self.face_policy!r})"
        )
