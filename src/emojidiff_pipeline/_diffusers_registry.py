"""Let diffusers find the EmojiDiff pipeline classes by name, so `DiffusionPipeline.from_pretrained(folder)` loads a
saved EmojiDiff folder after `import emojidiff_pipeline`.

diffusers resolves a model_index.json `_class_name` with `getattr(diffusers, name)` and never imports another
library. `import emojidiff_pipeline` must stay light (no torch), so the classes are announced lazily: each name is
mapped in the `diffusers` lazy module to a stand-in submodule, `diffusers._emojidiff_pipeline`, which is this
package itself; the first lookup imports `emojidiff_pipeline.pipeline`. If diffusers is not imported yet, a one-shot
import hook does this right after it is. Only names that diffusers does not define are added. Pure stdlib.

Components: `save_pretrained` records the adapter as `["emojidiff_pipeline.adapter", "EmojiDiffAdapter"]`. Loading
from the Hub, diffusers refuses any component library that is neither one it knows nor an attribute of
`diffusers.pipelines` ("... does not exist in <repo> and is not a module in 'diffusers/pipelines'"), even for
`EmojiDiffPipeline.from_pretrained`. So that name is also bound in `diffusers.pipelines`, to this (lazy) package,
from which diffusers then takes `EmojiDiffAdapter`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

PIPELINE_NAMES = (
    "EmojiDiffPipeline",
    "EmojiDiffImg2ImgPipeline",
    "EmojiDiffInpaintPipeline",
    "EmojiDiffControlNetPipeline",
    "EmojiDiffStableDiffusionPipeline",
)
_SHIM = "_emojidiff_pipeline"
COMPONENT_LIBRARIES = ("emojidiff_pipeline.adapter",)  # as model_index.json names them


def _announce(diffusers) -> None:
    """Map our pipeline names in the lazy `diffusers` module to this package (imported on first lookup)."""
    package = sys.modules[__name__.rpartition(".")[0]]
    class_to_module = getattr(diffusers, "_class_to_module", None)
    if not isinstance(class_to_module, dict):  # another diffusers layout: define the names now (imports torch)
        from . import pipeline

        for name in PIPELINE_NAMES:
            if not hasattr(diffusers, name):
                setattr(diffusers, name, getattr(pipeline, name))
        for library in COMPONENT_LIBRARIES:
            setattr(diffusers.pipelines, library, package)
        return
    sys.modules.setdefault(f"{diffusers.__name__}.{_SHIM}", package)
    for name in PIPELINE_NAMES:
        class_to_module.setdefault(name, _SHIM)
    pipelines = importlib.import_module(f"{diffusers.__name__}.pipelines")
    for library in COMPONENT_LIBRARIES:
        if library not in vars(pipelines):
            setattr(pipelines, library, package)


class _AfterDiffusersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps diffusers' own loader so :func:`_announce` runs once diffusers has imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "diffusers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_announce(module):
            exec_module(module)
            _announce(sys.modules.get(fullname, module))

        spec.loader.exec_module = exec_then_announce
        return spec


def register() -> None:
    """Announce the pipelines to diffusers now if it is imported, else right after it is."""
    if "diffusers" in sys.modules:
        _announce(sys.modules["diffusers"])
    elif not any(isinstance(f, _AfterDiffusersImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterDiffusersImport())
