"""Optional-dependency checks (cached) with ImportErrors that carry the pip command."""

from __future__ import annotations

import importlib.util
from functools import cache

_INSTALL = {
    "insightface": 'pip install "emojidiff_pipeline[face]" && pip install --no-deps insightface==2.1',
    "onnxruntime": 'pip install "emojidiff_pipeline[face]"',
    "cv2": 'pip install "emojidiff_pipeline[face]"',
    "accelerate": 'pip install "emojidiff_pipeline[train]"',
    "peft": 'pip install "emojidiff_pipeline[train]"',
}


@cache
def is_available(module: str) -> bool:
    """True when `module` can be imported (cached)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, feature: str) -> None:
    """Raise ImportError naming `feature` and the pip command when `module` is missing."""
    if not is_available(module):
        raise ImportError(f"{feature} needs `{module}`, which is not installed. Install it with: {_INSTALL.get(module, 'pip install ' + module)}")
