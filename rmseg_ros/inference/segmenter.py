"""Segmenter: a checkpoint on a device -> `predict(inputs, presence)` -> labels + confidence.

ROS-free, used by the perception node. Choices and why:
- device 'auto' takes CUDA when torch sees it, else the CPU. A CUDA error or out-of-memory
  during `predict` must not stop a robot's perception: it logs a warning, moves the model to the
  CPU for good and retries the same frame there. 'cuda' without a usable GPU falls back the
  same way at load time (with a warning).
- fp16 autocast only on CUDA (CPU fp16 is slower than fp32 on the machines we target).
- backend 'onnx' exports the model once (legacy TorchScript exporter, which needs no onnxscript)
  into a cache directory keyed by the checkpoint's content hash, and runs it with onnxruntime.
  The graph takes all four modality tensors plus a float presence (1, 4), so any subset runs in
  one graph; absent modalities are fed as zeros and masked inside the fusion. The graph ends at
  the stride-4 logits.
- both backends turn stride-4 logits into labels with `label_maps.labels_from_logits` (exactly
  the argmax of the bilinearly upsampled logits, ~2 ms on the CPU instead of ~10 ms for
  upsampling all class planes and reducing over them in onnxruntime).
- on CPU the torch backend folds BatchNorm into the convolutions and uses channels-last memory
  (oneDNN's 1x1 and depthwise convolutions are several times faster in that layout here).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rmseg_ros.atomic_files import atomic_path
from rmseg_ros.classes import check_same_classes
from rmseg_ros.config import from_dict
from rmseg_ros.frontend.preprocess import FrontendConfig
from rmseg_ros.inference.device import DEVICES, is_cuda_failure, resolve_device
from rmseg_ros.inference.label_maps import labels_from_logits
from rmseg_ros.modalities import INDEX, MODALITIES, input_channels, presence_from_names
from rmseg_ros.models.checkpoint import load_model

logger = logging.getLogger(__name__)

RUNTIMES = ('torch', 'onnx')  # the backends a Segmenter runs ('auto' is resolved before)
ONNX_OPSET = 17
ONNX_GRAPH = 'logits4'  # what the exported graph returns (part of the cache name): stride-4 logits


class _OnnxGraph(nn.Module):
    """Fixed-signature wrapper for export: four modality tensors + presence (1, 4) float."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, lidar: torch.Tensor,
                event: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """-> stride-4 logits; label_maps.labels_from_logits makes the label map."""
        inputs = {'rgb': rgb, 'depth': depth, 'lidar': lidar, 'event': event}
        return self.model(inputs, presence > 0.5, static=True, upsample=False).logits


def onnxruntime_offline() -> Any:
    """onnxruntime with its telemetry switched off: a robot's perception must not contact
    anyone (the node was seen resolving mobile.events.data.microsoft.com after configure).
    Every InferenceSession of the package is created after this call."""
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get('RMSEG_CACHE_DIR')
    if env:
        return Path(env) / 'onnx'
    return Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'rmseg_ros' / 'onnx'


def export_onnx(model: nn.Module, path: str | os.PathLike, hw: tuple[int, int],
                event_bins: int) -> Path:
    """Export `model` (FusionSegNet or FSMStudent) for a fixed input size, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _OnnxGraph(model).eval()  # export restores the wrapper's mode: keep it eval
    chans = input_channels(event_bins)
    args = (*(torch.zeros(1, chans[m], *hw) for m in MODALITIES), torch.ones(1, 4))
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(graph, args, str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[*MODALITIES, 'presence'],
                          output_names=['logits'], do_constant_folding=True)
    return path


class Segmenter:
    """Inference wrapper; build it with `from_checkpoint`."""

    def __init__(self, model: nn.Module, metadata: dict, device: str = 'cpu', fp16: bool = False,
                 backend: str = 'torch', onnx_path: Path | None = None,
                 num_threads: int | None = None) -> None:
        self.metadata = metadata
        self.classes: tuple[str, ...] = tuple(metadata['classes'])
        self.colors: tuple[tuple[int, ...], ...] = tuple(tuple(c) for c in metadata['colors'])
        self.modalities: tuple[str, ...] = tuple(metadata['modalities'])
        self.frontend = from_dict(FrontendConfig, metadata['frontend'], 'checkpoint frontend')
        self.input_hw: tuple[int, int] = tuple(metadata['input_hw'])
        self.event_bins = int(self.frontend.event_bins)
        self.backend = backend
        self.fp16 = fp16
        self.model = model
        self.device = device
        self.onnx_path = onnx_path
        self._session = None
        if backend == 'onnx':
            self._session = self._onnx_session(onnx_path, device, num_threads)
            self.device = 'cuda' if 'CUDAExecutionProvider' in self._session.get_providers() \
                else 'cpu'
            self.model = None  # the session is self-contained
        else:
            self._place(device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = 'auto', fp16: bool = False,
                        backend: str = 'torch', expected_classes: Iterable[str] | None = None,
                        expected_modalities: Iterable[str] | None = None,
                        cache_dir: str | os.PathLike | None = None,
                        num_threads: int | None = None) -> Segmenter:
        if backend not in RUNTIMES:
            raise ValueError(f'backend must be one of {RUNTIMES}, got {backend!r}')
        if device not in DEVICES:
            raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
        path = Path(path)
        model, meta = load_model(path)
        classes = list(meta.get('classes', []))
        if expected_classes is not None:
            check_same_classes(classes, expected_classes, str(path))
        if len(classes) > 255:
            raise ValueError(f'{path}: {len(classes)} classes do not fit uint8 labels '
                             '(255 is reserved for "unlabelled")')
        mods = list(meta.get('modalities', []))
        if expected_modalities is not None:
            want = [m for m in MODALITIES if m in set(expected_modalities)]
            if sorted(want) != sorted(mods) or len(want) != len(set(expected_modalities)):
                raise ValueError(f'{path}: checkpoint modalities {mods} disagree with the '
                                 f'configured modalities {list(expected_modalities)}')
        front = from_dict(FrontendConfig, meta['frontend'], 'checkpoint frontend')
        cfg = getattr(model, 'cfg', None)
        bins = cfg.event_bins if hasattr(cfg, 'event_bins') else model.robust.cfg.event_bins
        if bins != front.event_bins:
            raise ValueError(f'{path}: model expects {bins} event bins, its frontend '
                             f'{front.event_bins}')
        dev = resolve_device(device)
        onnx_path = None
        if backend == 'onnx':
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            hw = tuple(meta['input_hw'])
            name = (f'{_file_sha256(path)[:20]}_{hw[0]}x{hw[1]}_op{ONNX_OPSET}'
                    f'_torch{torch.__version__.split("+")[0]}_{ONNX_GRAPH}.onnx')
            onnx_path = cache / name
            if not onnx_path.is_file():
                logger.info('exporting %s to ONNX at %s', path, onnx_path)
                export_onnx(model, onnx_path, hw, bins)
        return cls(model, meta, dev, fp16, backend, onnx_path, num_threads)

    def _place(self, device: str) -> None:
        """Move the torch model to `device` in its inference form."""
        self.model.eval()
        if hasattr(self.model, 'fuse_batchnorm'):
            self.model.fuse_batchnorm()
        self.model.to(device)
        if device == 'cpu':
            self.model.to(memory_format=torch.channels_last)
        self.device = device

    def _onnx_session(self, path: Path | None, device: str, num_threads: int | None):
        ort = onnxruntime_offline()
        if path is None:
            raise ValueError('backend onnx needs an exported model path')
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        providers = ['CPUExecutionProvider']
        if device == 'cuda' and 'CUDAExecutionProvider' in ort.get_available_providers():
            providers.insert(0, 'CUDAExecutionProvider')
        return ort.InferenceSession(str(path), opts, providers=providers)

    # ------------------------------------------------------------------ inference
    def _presence(self, presence: Any) -> np.ndarray:
        if isinstance(presence, str):
            presence = [presence]
        arr = np.asarray(list(presence) if not isinstance(presence, np.ndarray) else presence)
        if arr.dtype.kind in 'US' or (arr.dtype == object and arr.size
                                      and isinstance(arr.flat[0], str)):
            return presence_from_names(arr.tolist())
        if arr.shape != (len(MODALITIES),):
            raise ValueError(f'presence must be bool[{len(MODALITIES)}] (order {MODALITIES}) or '
                             f'modality names, got {presence!r}')
        return arr.astype(bool)

    def _check_inputs(self, inputs: dict[str, np.ndarray], presence: np.ndarray
                      ) -> dict[str, np.ndarray]:
        """The tensors that take part: present, known to the model, of the right shape."""
        chans = input_channels(self.event_bins)
        used: dict[str, np.ndarray] = {}
        hw = None
        for m in MODALITIES:
            if not presence[INDEX[m]]:
                continue
            if m not in inputs:
                raise ValueError(f'{m} marked present but no tensor given')
            if m not in self.modalities:
                continue  # the model was not trained with it: it cannot use it
            t = np.asarray(inputs[m], dtype=np.float32)
            if t.ndim != 3 or t.shape[0] != chans[m]:
                raise ValueError(f'{m}: expected ({chans[m]}, H, W), got {t.shape}')
            if hw is not None and t.shape[1:] != hw:
                raise ValueError(f'{m}: size {t.shape[1:]} differs from the others {hw}')
            hw = t.shape[1:]
            used[m] = np.ascontiguousarray(t)
        if not used:
            present = [m for m in MODALITIES if presence[INDEX[m]]]
            raise ValueError(f'no usable modality: present {present}, '
                             f'model modalities {list(self.modalities)}')
        if self.backend == 'onnx' and tuple(hw) != self.input_hw:
            raise ValueError(f'onnx backend runs at {self.input_hw}, inputs are {tuple(hw)}')
        return used

    def warm_up(self) -> None:
        """One prediction on zeros: the first call allocates (and on CUDA initialises kernels),
        which should not count as a frame's latency."""
        self.predict({'rgb': np.zeros((3, *self.input_hw), np.float32)}, ['rgb'])

    def predict(self, inputs: dict[str, np.ndarray], presence: Any, confidence: bool = True
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """inputs {modality: (C, H, W) float32}, presence bool[4] or names ->
        labels (H, W) uint8, confidence (H, W) float32 (max softmax probability; None when
        `confidence` is false, which saves its cost)."""
        pres = self._presence(presence)
        used = self._check_inputs(inputs, pres)
        if self.backend == 'onnx':
            return self._predict_onnx(used, confidence)
        return self._run(used, confidence)

    def _predict_onnx(self, used: dict[str, np.ndarray], confidence: bool = True
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        chans = input_channels(self.event_bins)
        hw = next(iter(used.values())).shape[1:]
        feed = {m: (used[m][None] if m in used else np.zeros((1, chans[m], *hw), np.float32))
                for m in MODALITIES}
        feed['presence'] = np.array([[m in used for m in MODALITIES]], dtype=np.float32)
        (logits,) = self._session.run(['logits'], feed)
        return labels_from_logits(logits[0], hw, confidence)

    def _run(self, used: dict[str, np.ndarray], confidence: bool = True
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """Torch inference with the permanent CUDA -> CPU fallback."""
        try:
            return self._forward(used, confidence)
        except Exception as exc:
            if self.device == 'cpu' or not is_cuda_failure(exc):
                raise
            logger.warning('inference on %s failed (%s: %s); falling back to the CPU for good',
                           self.device, type(exc).__name__, exc)
            self._place('cpu')
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            return self._forward(used, confidence)

    def _forward(self, used: dict[str, np.ndarray], confidence: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        device = self.device
        presence = torch.tensor([m in used for m in MODALITIES], device=device)
        autocast = torch.autocast('cuda', dtype=torch.float16) if (
            self.fp16 and device.startswith('cuda')) else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            x = {m: torch.from_numpy(t).unsqueeze(0).to(device) for m, t in used.items()}
            if device == 'cpu':  # once here, not in every stem of the teacher and robust model
                x = {m: t.contiguous(memory_format=torch.channels_last) for m, t in x.items()}
            logits = self.model(x, presence, upsample=False).logits
        hw = next(iter(used.values())).shape[1:]
        return labels_from_logits(logits[0].float().cpu().numpy(), hw, confidence)
