"""``module:factory`` hooks: the one way every entry point (pipeline CLI, training, IDI, evaluation) takes a
pluggable model: a face detector, a face recognizer, an expression encoder or an evaluation scorer.

    load_factory("emojidiff_pipeline.face_models.dlib_models:recognizer", "--recognizer")  # -> recognizer()
"""

from __future__ import annotations

import importlib
from typing import Any


def is_factory_spec(value: Any) -> bool:
    """True for ``"package.module:factory"`` (a dotted module name, one colon, an attribute), not for a file path."""
    if not isinstance(value, str) or value.count(":") != 1:
        return False
    module_name, attr = value.split(":")
    return bool(module_name) and bool(attr) and all(part.isidentifier() for part in (*module_name.split("."), attr))


def load_factory(spec: str, arg_name: str) -> Any:
    """``"package.module:factory"`` -> ``factory()``; errors name `arg_name` and the spec received."""
    if not is_factory_spec(spec):
        raise ValueError(f"`{arg_name}` must be 'module:factory' (e.g. 'package.module:make_model'), got {spec!r}.")
    module_name, attr = spec.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"`{arg_name}`={spec!r}: cannot import {attr!r} from {module_name!r}: {err}") from err
    if not callable(factory):
        raise ValueError(f"`{arg_name}`={spec!r}: {attr!r} is a {type(factory).__name__}, not a callable factory.")
    return factory()
