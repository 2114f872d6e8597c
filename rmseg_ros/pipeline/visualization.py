"""Palettes, colour masks and overlays for rviz2 (numpy + OpenCV, no ROS).

The overlay's base is the RGB frame when the camera is in the set; when it is not (camera dead or
under-exposed and dropped), the base is a colour map of the depth or LiDAR range so the overlay
still shows the scene geometry the labels came from.
"""

from __future__ import annotations

import cv2
import numpy as np

from rmseg_ros.frontend.preprocess import ModelInput


def color_mask(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids -> (H, W, 3) uint8 RGB through a (256, 3) palette (LUT)."""
    if palette.shape != (256, 3):
        raise ValueError(f'palette must be (256, 3), got {palette.shape}')
    return palette[labels]


def range_colormap(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Normalised range in [0, 1] + validity -> (H, W, 3) RGB (TURBO, near = red), black if
    invalid."""
    v = np.clip(1.0 - values, 0.0, 1.0)
    rgb = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    return np.where(valid[..., None] > 0, rgb, 0).astype(np.uint8)


def base_image(model_input: ModelInput) -> np.ndarray:
    """What the overlay is drawn on: RGB, else a depth or LiDAR range colour map, else grey."""
    if model_input.overlay_rgb is not None and 'rgb' in model_input.tensors:
        return model_input.overlay_rgb
    for modality in ('depth', 'lidar'):
        t = model_input.tensors.get(modality)
        if t is not None:
            if modality == 'depth':
                return range_colormap(t[0] * 4.0, t[1])  # 0..5 m of the 20 m scale fills it
            return range_colormap(t[0] * 5.0, t[2])
    if model_input.overlay_rgb is not None:  # degraded RGB, dropped from the model: still a base
        return model_input.overlay_rgb
    any_t = next(iter(model_input.tensors.values()), None)
    hw = any_t.shape[1:] if any_t is not None else (1, 1)
    return np.full((*hw, 3), 64, np.uint8)


def overlay(base: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_index: int = 255) -> np.ndarray:
    """Blend the colour mask over `base` (resized to the labels) where a label is known."""
    h, w = labels.shape
    if base.shape[:2] != (h, w):
        base = cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR)
    mask = color_mask(labels, palette)
    out = cv2.addWeighted(base, 1.0 - alpha, mask, alpha, 0.0)
    unknown = labels == ignore_index
    if unknown.any():
        out[unknown] = base[unknown]
    return out


def confidence_image(confidence: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Max softmax probability (H, W) in [0, 1] -> mono8 (0..255) at `hw`, bilinear: the
    confidence image a semantic costmap layer reads next to the label image of the same size."""
    conf = np.asarray(confidence, dtype=np.float32)
    if conf.shape != tuple(hw):
        conf = np.asarray(cv2.resize(conf, (int(hw[1]), int(hw[0])),
                                     interpolation=cv2.INTER_LINEAR), dtype=np.float32)
    return np.rint(np.clip(conf, 0.0, 1.0) * 255.0).astype(np.uint8)
