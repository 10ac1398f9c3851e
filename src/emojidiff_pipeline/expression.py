"""Expression encoders: the pluggable face-expression models behind the expression branch's code stream.

An expression encoder maps face images (with their 5 keypoints when known) to a code vector per image: blendshape
coefficients, action-unit intensities, a 3DMM expression code, or the synthetic world's expression factors. The
adapter records the encoder's ``name`` and ``code_dim`` in its config and the pipeline refuses an encoder of another
name or width, since codes of different models mean different things.

    class MyEncoder:
        name = "my-blendshapes-v1"
        code_dim = 52
        def __call__(self, images, keypoints):  # list[uint8 (H, W, 3)], list[(5, 2) | None] -> (N, 52) float
            ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ExpressionEncoder(Protocol):
    """images (uint8 (H, W, 3) each) + keypoints ((5, 2) pixels, or None to detect) -> codes (N, code_dim)."""

    name: str
    code_dim: int

    def __call__(self, images: Sequence[np.ndarray], keypoints: Sequence[Any]) -> np.ndarray: ...


class CallableExpressionEncoder:
    """Wrap a plain ``fn(images, keypoints) -> (N, K)`` callable as an :class:`ExpressionEncoder`, checking its output.

    Args:
        fn: the scorer.
        name: a stable name for the model (recorded in adapter configs).
        code_dim: K, the width of every code.
    """

    def __init__(self, fn: Callable[[Sequence[np.ndarray], Sequence[Any]], np.ndarray], name: str, code_dim: int):
        if not callable(fn):
            raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
        if isinstance(code_dim, bool) or not isinstance(code_dim, int) or code_dim <= 0:
            raise ValueError(f"`code_dim` must be a positive int, got {code_dim!r}.")
        self.fn, self.name, self.code_dim = fn, name, code_dim

    def __call__(self, images: Sequence[np.ndarray], keypoints: Sequence[Any]) -> np.ndarray:
        if len(images) != len(keypoints):
            raise ValueError(f"Got {len(images)} images but {len(keypoints)} keypoint entries; give one per image.")
        codes = np.asarray(self.fn(list(images), list(keypoints)), dtype=np.float32)
        if codes.shape != (len(images), self.code_dim):
            raise ValueError(
                f"Expression encoder {self.name!r} returned shape {codes.shape}, "
                f"expected ({len(images)}, {self.code_dim})."
            )
        if not np.isfinite(codes).all():
            raise ValueError(f"Expression encoder {self.name!r} returned non-finite codes.")
        return codes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, code_dim={self.code_dim})"


def check_expression_encoder(encoder: Any, arg: str = "expression_encoder") -> ExpressionEncoder:
    """Return `encoder` if it follows the :class:`ExpressionEncoder` protocol, else raise naming `arg`."""
    if not isinstance(encoder, ExpressionEncoder) or not callable(encoder):
        raise TypeError(
            f"`{arg}` must be an expression encoder: a callable (images, keypoints) -> (N, code_dim) with `name` "
            f"(str) and `code_dim` (int) attributes (see emojidiff_pipeline.expression), got {type(encoder).__name__}."
        )
    if isinstance(encoder.code_dim, bool) or not isinstance(encoder.code_dim, int) or encoder.code_dim <= 0:
        raise ValueError(f"`{arg}.code_dim` must be a positive int, got {encoder.code_dim!r}.")
    if not isinstance(encoder.name, str) or not encoder.name:
        raise ValueError(f"`{arg}.name` must be a non-empty string, got {encoder.name!r}.")
    return encoder


def load_expression_encoder(spec: str, arg: str = "--expression_encoder") -> ExpressionEncoder:
    """``"module:factory"`` -> ``factory()``, which must return an :class:`ExpressionEncoder`."""
    from .hooks import load_factory

    return check_expression_encoder(load_factory(spec, arg), arg)


def check_adapter_encoder(adapter_config: Any, encoder: ExpressionEncoder, arg: str = "expression_encoder") -> None:
    """Refuse an encoder other than the one the adapter's code stream was trained with (by name and width)."""
    want_name, want_dim = adapter_config.expression_encoder, adapter_config.expression_code_dim
    if encoder.code_dim != want_dim:
        raise ValueError(
            f"`{arg}` {encoder.name!r} gives codes of width {encoder.code_dim}, but the adapter's code stream was "
            f"trained on width {want_dim} (encoder {want_name!r})."
        )
    if want_name is not None and encoder.name != want_name:
        raise ValueError(
            f"`{arg}` is {encoder.name!r}, but the adapter's code stream was trained with the expression encoder "
            f"{want_name!r}; codes of another model mean other things. Use that encoder."
        )
