"""Running a model: `segmenter` (checkpoint + device -> predict, ONNX export and sessions),
`device` (where it runs) and `label_maps` (labels and confidence from logits).

`rmseg_ros.inference.Segmenter` (DESIGN.md section 7) and the other names of the former module
are resolved on first use, so that `rmseg_ros.inference.device`, which the launch process reads,
does not import torch through this package."""

from __future__ import annotations

from typing import Any

_SEGMENTER_NAMES = ('Segmenter', 'export_onnx', 'onnxruntime_offline', 'default_cache_dir')


def __getattr__(name: str) -> Any:
    if name in _SEGMENTER_NAMES:
        from rmseg_ros.inference import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = list(_SEGMENTER_NAMES)
