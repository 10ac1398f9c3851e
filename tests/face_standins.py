"""Tiny ONNX stand-ins for insightface models, built offline with torch.

No insightface model pack can be downloaded on the build and test machines, so tests build stand-ins that go
through insightface's real code paths (``model_zoo.get_model`` routing by shapes, ``SCRFD.detect`` anchor
decoding and NMS, ``ArcFaceONNX.get`` alignment and preprocessing, ``FaceAnalysis`` pack loading):

- :func:`make_arcface_standin`: an ArcFace-shaped recognizer, input ``"input.1"`` [N, 3, 112, 112] ->
  output [N, 512] (a seeded conv + linear; channel-order sensitive, so BGR/RGB mix-ups change it).
- :func:`make_scrfd_standin`: an SCRFD-shaped detector (9 outputs: scores, bbox distances and keypoint
  distances for strides 8/16/32, two anchors per location, in insightface's output order) that fires exactly one
  anchor per baked-in face. The faces are given in the coordinates of an image of size ``image_size``; the graph
  reads its own input size and reproduces SCRFD's letterbox scale, so the decoded boxes and keypoints land on the
  given image coordinates at any detection size (the stand-in must only be run on images of ``image_size``).
  ``input_size=None`` exports a dynamic-size detector (like the real ``det_10g.onnx``); ``max_input_side`` makes
  it fire only when the detection input is at most that large (to test retries at smaller det sizes).
- :func:`write_model_pack`: a fake pack folder ``<root>/models/<name>/`` with ``det_10g.onnx`` and
  ``w600k_r50.onnx``.

Requires torch (export with ``dynamo=False``: onnxscript is absent).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCRFD_STRIDES = (8, 16, 32)
SCRFD_NUM_ANCHORS = 2

# Five landmarks of `skimage.data.astronaut()` (512x512), insightface order: left eye, right eye (image left and
# right: the subject's right and left eye), nose tip, left mouth corner, right mouth corner. Pixel-index
# coordinates (OpenCV convention: pixel (i, j) has its centre at (i, j)), read off an 8x enlarged crop.
ASTRONAUT_KPS = np.array(
    [[203.1, 101.3], [246.3, 103.5], [223.5, 126.0], [203.8, 140.0], [241.9, 141.3]], dtype=np.float32
)


def bbox_from_kps(kps: np.ndarray) -> np.ndarray:
    """A plausible face box (x1, y1, x2, y2) around 5 landmarks (5, 2): forehead above, chin below."""
    kps = np.asarray(kps, dtype=np.float32).reshape(5, 2)
    x_min, y_min = kps.min(0)
    x_max, y_max = kps.max(0)
    w, h = x_max - x_min, y_max - y_min
    return np.array([x_min - 0.5 * w, y_min - 0.8 * h, x_max + 0.5 * w, y_max + 0.6 * h], dtype=np.float32)


def _export(module: nn.Module, dummy: torch.Tensor, path: Path, output_names: list[str], dynamic_axes: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=["input.1"],
            output_names=output_names,
            dynamic_axes=dynamic_axes or None,
            opset_version=17,
            dynamo=False,
        )
    return path


class _ArcFaceStandIn(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.fc = nn.Linear(8 * 14 * 14, 512)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 112, 112) -> (N, 512)
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def make_arcface_standin(path: str | os.PathLike, seed: int = 0) -> Path:
    """Export an ArcFace-shaped recognizer: ``input.1`` [N, 3, 112, 112] -> [N, 512]; loads as ArcFaceONNX."""
    return _export(
        _ArcFaceStandIn(seed),
        torch.zeros(1, 3, 112, 112),
        Path(path),
        ["embedding"],
        {"input.1": {0: "batch"}, "embedding": {0: "batch"}},
    )


class _ScrfdStandIn(nn.Module):
    """SCRFD-shaped outputs that fire one anchor per face; faces in `image_size` image coordinates."""

    def __init__(self, faces: list[dict], image_size: tuple[int, int], max_input_side: int | None):
        super().__init__()
        self.image_h, self.image_w = image_size
        self.max_input_side = max_input_side
        self.faces = []
        for i, face in enumerate(faces):
            kps = torch.as_tensor(np.asarray(face["kps"], dtype=np.float32).reshape(5, 2))
            bbox = face.get("bbox")
            bbox = bbox_from_kps(kps.numpy()) if bbox is None else np.asarray(bbox, dtype=np.float32)
            stride = int(face.get("stride", SCRFD_STRIDES[i % len(SCRFD_STRIDES)]))
            self.register_buffer(f"kps_{i}", kps.reshape(1, 10))
            self.register_buffer(f"bbox_{i}", torch.as_tensor(bbox).reshape(1, 4))
            self.faces.append((i, stride, float(face.get("score", 0.9))))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (1, 3, H, W) -> 3 x scores, 3 x bbox, 3 x kps
        h_in = torch.ones_like(x[0, 0, :, 0]).sum()
        w_in = torch.ones_like(x[0, 0, 0, :]).sum()
        # SCRFD letterboxes the image into the input: det_scale = new_height / image_height.
        im_ratio = self.image_h / self.image_w
        det_scale = torch.where(
            h_in / w_in < im_ratio, h_in / self.image_h, torch.floor(w_in * im_ratio) / self.image_h
        )
        gate = x.mean() * 0.0 + 1.0  # keeps the input in the graph
        if self.max_input_side is not None:
            gate = gate * (torch.maximum(h_in, w_in) <= self.max_input_side).float()
        scores_out, bbox_out, kps_out = [], [], []
        for stride in SCRFD_STRIDES:
            ones = torch.ones_like(F.avg_pool2d(x[:, :1], kernel_size=stride, stride=stride)[0, 0])  # (H/s, W/s)
            grid_y = torch.cumsum(ones, 0) - 1
            grid_x = torch.cumsum(ones, 1) - 1
            centres = torch.stack([grid_x, grid_y], -1).reshape(-1, 2) * stride  # (H/s * W/s, 2)
            centres = torch.cat([centres, centres], 1).reshape(-1, 2)  # (N, 2): 2 anchors per location
            anchor_index = torch.cumsum(torch.ones_like(centres[:, 0]), 0) - 1  # (N,)
            rows, cols = ones[:, 0].sum(), ones[0].sum()
            scores = torch.zeros_like(centres[:, :1])  # (N, 1)
            bboxes = torch.cat([scores] * 4, 1)  # (N, 4)
            kpss = torch.cat([scores] * 10, 1)  # (N, 10)
            for i, face_stride, score in self.faces:
                if face_stride != stride:
                    continue
                box = getattr(self, f"bbox_{i}") * det_scale  # (1, 4) in detection-input pixels
                kps = getattr(self, f"kps_{i}") * det_scale  # (1, 10)
                col = torch.minimum(torch.clamp(torch.floor((box[0, 0] + box[0, 2]) / 2 / stride), min=0), cols - 1)
                row = torch.minimum(torch.clamp(torch.floor((box[0, 1] + box[0, 3]) / 2 / stride), min=0), rows - 1)
                onehot = (anchor_index == (row * cols + col) * SCRFD_NUM_ANCHORS).float().unsqueeze(1)  # (N, 1)
                cx, cy = centres[:, :1], centres[:, 1:]
                # Distances from the anchor centre in stride units (SCRFD multiplies by the stride).
                dist_box = torch.cat([cx - box[:, 0:1], cy - box[:, 1:2], box[:, 2:3] - cx, box[:, 3:4] - cy], 1)
                dist_kps = kps - centres.repeat(1, 5)
                scores = scores + onehot * score * gate
                bboxes = bboxes + onehot * dist_box / stride
                kpss = kpss + onehot * dist_kps / stride
            scores_out.append(scores)
            bbox_out.append(bboxes)
            kps_out.append(kpss)
        return scores_out + bbox_out + kps_out


def make_scrfd_standin(
    path: str | os.PathLike,
    faces: Sequence[dict] = (),
    *,
    image_size: tuple[int, int] = (512, 512),
    input_size: tuple[int, int] | None = (640, 640),
    max_input_side: int | None = None,
) -> Path:
    """Export an SCRFD-shaped detector (9 outputs) that fires one anchor per face.

    Args:
        faces: dicts with ``kps`` (5, 2) in image coordinates, optional ``bbox`` (4,) (default
            :func:`bbox_from_kps`), ``score`` (default 0.9) and ``stride`` (default 8, 16, 32 by face index; two
            faces on one stride must have box centres in different cells). Empty: a detector that finds nothing.
        image_size: (height, width) of the images the stand-in will be run on.
        input_size: (width, height) of a static input (``1x3xHxW``), or None for a dynamic one (``1x3x?x?``).
        max_input_side: fire only when max(input height, width) <= this (None: always).
    """
    module = _ScrfdStandIn(list(faces), tuple(image_size), max_input_side)
    names = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in SCRFD_STRIDES]
    if input_size is None:
        dummy = torch.zeros(1, 3, 640, 640)
        dynamic_axes = {"input.1": {2: "height", 3: "width"}}
        dynamic_axes.update({name: {0: f"anchors_{name.split('_')[1]}"} for name in names})
    else:
        dummy = torch.zeros(1, 3, int(input_size[1]), int(input_size[0]))
        dynamic_axes = {}
    return _export(module, dummy, Path(path), names, dynamic_axes)


def write_model_pack(
    root: str | os.PathLike,
    name: str = "buffalo_l",
    faces: Sequence[dict] = (),
    *,
    image_size: tuple[int, int] = (512, 512),
    input_size: tuple[int, int] | None = (640, 640),
    seed: int = 0,
) -> Path:
    """Write a fake model pack ``<root>/models/<name>/`` (det_10g.onnx + w600k_r50.onnx); returns the folder."""
    folder = Path(root) / "models" / name
    make_scrfd_standin(folder / "det_10g.onnx", faces, image_size=image_size, input_size=input_size)
    make_arcface_standin(folder / "w600k_r50.onnx", seed=seed)
    return folder


def _tiny_face_net(out_dim: int, seed: int, squash: bool) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.AvgPool2d(4), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(out_dim)]
    net = nn.Sequential(*layers, *([nn.Sigmoid()] if squash else []))
    net(torch.zeros(1, 3, 112, 112))  # materialise the lazy layer
    return net


def tiny_expression_loss_model():
    """`module:factory` hook: a seeded tiny conv net as a differentiable expression estimator (11 factors)."""
    from emojidiff_pipeline.train.face_losses import DifferentiableFaceModel

    return DifferentiableFaceModel(_tiny_face_net(11, 3, squash=True), name="tiny/expression")


def tiny_identity_loss_model():
    """`module:factory` hook: a seeded tiny conv net as a differentiable face recognizer (16-d)."""
    from emojidiff_pipeline.train.face_losses import DifferentiableFaceModel

    return DifferentiableFaceModel(_tiny_face_net(16, 4, squash=False), name="tiny/identity")


def not_a_face_model():
    return nn.Linear(2, 2)
