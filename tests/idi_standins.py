"""Stand-in instruments for IDI tests on tiny models (importable as 'idi_standins:factory')."""

import numpy as np
import torch
import torch.nn as nn

# insightface-order keypoints of a face centred in a 64x64 image
CENTRED_KPS = np.array([[24.0, 27.0], [40.0, 27.0], [32.0, 35.0], [26.0, 44.0], [38.0, 44.0]], np.float32)


def fixed_detector():
    """Detector callable: one face at CENTRED_KPS (scaled to the image size) in every image."""

    def detect(image):
        scale = image.shape[0] / 64.0
        kps = CENTRED_KPS * scale
        return [(np.r_[kps.min(0) - 4, kps.max(0) + 4], kps, 0.99)]

    return detect


def blank_detector():
    """Detector callable that never finds a face."""
    return lambda image: []


def colour_scorer():
    """Expression scorer stand-in: mean colour of the central region, in [0, 1] (N, 3)."""

    def score(images, kps):
        return np.stack([np.asarray(im, np.float32)[16:48, 16:48].mean((0, 1)) / 255.0 for im in images])

    return score


class _SwapperStandIn(nn.Module):
    """INSwapper-shaped net: (target [1,3,128,128], source latent [1,512]) -> [1,3,128,128]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.to_bias = nn.Linear(512, 3)
        self.emap = nn.Parameter(torch.eye(512))  # insightface reads the last initializer as the embedding map

    def forward(self, target, source):
        latent = source @ self.emap
        return torch.sigmoid(self.conv(target) + self.to_bias(latent)[:, :, None, None])


def make_inswapper_standin(path):
    import onnx

    torch.manual_seed(0)
    module = _SwapperStandIn().eval()
    torch.onnx.export(
        module,
        (torch.zeros(1, 3, 128, 128), torch.zeros(1, 512)),
        str(path),
        input_names=["target", "source"],
        output_names=["output"],
        dynamo=False,
    )
    model = onnx.load(str(path))
    inits = list(model.graph.initializer)
    emap = next(i for i in inits if tuple(i.dims) == (512, 512))
    del model.graph.initializer[:]
    model.graph.initializer.extend([i for i in inits if i is not emap] + [emap])
    onnx.save(model, str(path))
    return path
