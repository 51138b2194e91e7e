"""Make colordiff's pipeline classes known to diffusers by name, so that the generic entry points load its folders.

`DiffusionPipeline.from_pretrained(folder)` looks the `_class_name` of model_index.json up as an attribute of the
`diffusers` module, and `AutoPipelineForImage2Image` in its task mapping. Loading pipeline code from a model folder
would need `trust_remote_code`; instead, once `colordiff` is imported, `diffusers.ColorDiffPipeline` and
`diffusers.SeAdaPipeline` resolve to the installed classes (imported on first use), and the image-to-image mapping
names them. Installing this costs nothing until diffusers is imported; nothing of diffusers is changed but these
names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

PIPELINE_NAMES = ("ColorDiffPipeline", "SeAdaPipeline")
AUTO_NAMES = {"colordiff": "ColorDiffPipeline", "seada": "SeAdaPipeline"}  # AutoPipeline model names


def _pipeline_class(name: str):
    return getattr(importlib.import_module("colordiff.pipelines"), name)


def register_auto_pipelines() -> None:
    """Name the pipelines in diffusers' AutoPipelineForImage2Image mapping (imports them)."""
    from diffusers.pipelines import auto_pipeline

    for model_name, class_name in AUTO_NAMES.items():
        auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING.setdefault(model_name, _pipeline_class(class_name))


def _extend(module) -> None:
    """Let the `diffusers` module resolve PIPELINE_NAMES (and register the AutoPipeline names when it is asked for
    an AutoPipeline class), keeping its own lazy lookup for everything else."""
    base = type(module)
    if getattr(base, "_colordiff_names", False):
        return

    class WithColorDiff(base):
        _colordiff_names = True

        def __getattr__(self, name):
            if name in PIPELINE_NAMES:
                value = _pipeline_class(name)
                setattr(self, name, value)
                return value
            value = super().__getattr__(name)
            if name.startswith("AutoPipelineFor"):
                register_auto_pipelines()
            return value

    module.__class__ = WithColorDiff


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `_extend` on the diffusers module right after it is first imported (then removes itself)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "diffusers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_extend(module):
            exec_module(module)
            _extend(sys.modules[fullname])  # diffusers puts its lazy module in sys.modules in its place

        spec.loader.exec_module = exec_then_extend
        return spec


def install() -> None:
    """Called by `import colordiff`: extend diffusers now if it is imported, else right after it is."""
    if "diffusers" in sys.modules:
        _extend(sys.modules["diffusers"])
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
