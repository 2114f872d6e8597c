"""Event camera simulation from consecutive rendered frames (ESIM / v2e style).

Each pixel keeps a reference log intensity; an event fires each time the log intensity, linearly
interpolated between two frames, crosses reference +- its own contrast threshold (thresholds are
drawn once per pixel: sensor mismatch). The reference moves by one threshold per event, so the
events of a pixel over many frames sum to its total log-intensity change (up to one threshold).
Timestamps are interpolated inside the frame interval. Polarity: +1 = ON (brighter),
-1 = OFF (darker). Optional: refractory period per pixel and background-activity noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.sim.config import EventConfig


@dataclass
class Events:
    x: np.ndarray  # uint16 column
    y: np.ndarray  # uint16 row
    t_ns: np.ndarray  # int64 nanoseconds on the bag clock
    p: np.ndarray  # int8, +1 ON / -1 OFF

    def __len__(self) -> int:
        return int(self.x.size)

    @staticmethod
    def empty() -> Events:
        return Events(np.zeros(0, np.uint16), np.zeros(0, np.uint16), np.zeros(0, np.int64),
                      np.zeros(0, np.int8))

    @staticmethod
    def concatenate(parts: list[Events]) -> Events:
        if not parts:
            return Events.empty()
        return Events(*(np.concatenate([getattr(e, k) for e in parts])
                        for k in ('x', 'y', 't_ns', 'p')))

    def sorted(self) -> Events:
        order = np.argsort(self.t_ns, kind='stable')
        return Events(self.x[order], self.y[order], self.t_ns[order], self.p[order])


def log_intensity(rgb: np.ndarray, eps: float) -> np.ndarray:
    """log(luma + eps) with luma in [0, 1] (Rec. 601 weights)."""
    img = np.asarray(rgb, dtype=np.float32)
    luma = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114 if img.ndim == 3 \
        else img
    return np.log(luma * (1.0 / 255.0) + eps)


class EventSimulator:
    def __init__(self, height: int, width: int, cfg: EventConfig,
                 rng: np.random.Generator) -> None:
        self.h, self.w, self.cfg, self.rng = height, width, cfg, rng
        shape = height * width
        self.c_pos = np.maximum(rng.normal(cfg.contrast_pos, cfg.contrast_sigma, shape),
                                cfg.min_contrast)
        self.c_neg = np.maximum(rng.normal(cfg.contrast_neg, cfg.contrast_sigma, shape),
                                cfg.min_contrast)
        self.ref: np.ndarray | None = None
        self.last: np.ndarray | None = None
        self.last_t: int | None = None
        self.last_event_t = np.full(shape, np.iinfo(np.int64).min // 2, dtype=np.int64)

    def reset(self, rgb: np.ndarray, t_ns: int) -> None:
        """Start from a frame: the reference is its log intensity (no events)."""
        self.ref = log_intensity(rgb, self.cfg.log_eps).reshape(-1).astype(np.float64)
        self.last = self.ref.copy()
        self.last_t = int(t_ns)

    def step(self, rgb: np.ndarray, t_ns: int) -> Events:
        """Events in (last frame time, t_ns] from the change to this frame, sorted by time."""
        if self.ref is None or self.last is None or self.last_t is None:
            self.reset(rgb, t_ns)
            return Events.empty()
        t0, t1 = self.last_t, int(t_ns)
        dt = t1 - t0
        cur = log_intensity(rgb, self.cfg.log_eps).reshape(-1).astype(np.float64)
        prev, ref = self.last, self.ref
        diff = cur - ref
        cap = self.cfg.max_events_per_pixel
        n_pos = np.minimum(np.floor(np.maximum(diff, 0) / self.c_pos), cap).astype(np.int64)
        n_neg = np.minimum(np.floor(np.maximum(-diff, 0) / self.c_neg), cap).astype(np.int64)
        parts = []
        for n, c, sign in ((n_pos, self.c_pos, 1), (n_neg, self.c_neg, -1)):
            pix = np.flatnonzero(n)
            if pix.size == 0:
                continue
            counts = n[pix]
            rep = np.repeat(pix, counts)
            k = np.arange(rep.size) - np.repeat(np.cumsum(counts) - counts, counts) + 1
            level = ref[rep] + sign * k * c[rep]
            delta = cur[rep] - prev[rep]
            safe = np.where(np.abs(delta) > 1e-12, delta, 1.0)
            frac = np.where(np.abs(delta) > 1e-12, (level - prev[rep]) / safe, 1.0)
            t = t0 + np.maximum(np.rint(np.clip(frac, 0.0, 1.0) * dt).astype(np.int64), 1)
            parts.append((rep, t, np.full(rep.size, sign, np.int8)))
            ref[pix] += sign * counts * c[pix]
        self.last, self.last_t = cur, t1
        if parts:
            pix = np.concatenate([q[0] for q in parts])
            t = np.concatenate([q[1] for q in parts])
            pol = np.concatenate([q[2] for q in parts])
        else:
            pix, t, pol = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
        if self.cfg.refractory_s > 0 and pix.size:
            pix, t, pol = self._refractory(pix, t, pol)
        events = Events((pix % self.w).astype(np.uint16), (pix // self.w).astype(np.uint16), t,
                        pol)
        if self.cfg.noise_rate_hz > 0:
            events = Events.concatenate([events, self._noise(t0, t1)])
        return events.sorted()

    def _refractory(self, pix: np.ndarray, t: np.ndarray, pol: np.ndarray) -> tuple:
        """Drop events closer than the refractory period to the previous kept event of the same
        pixel (greedy, in time order per pixel)."""
        period = int(self.cfg.refractory_s * 1e9)
        order = np.lexsort((t, pix))
        pix, t, pol = pix[order], t[order], pol[order]
        keep = np.zeros(pix.size, dtype=bool)
        last = self.last_event_t
        # Vectorised greedy per pixel is awkward; events per pixel per frame are few (capped).
        start = np.flatnonzero(np.r_[True, pix[1:] != pix[:-1]])
        ends = np.r_[start[1:], pix.size]
        for s, e in zip(start, ends, strict=True):
            prev = last[pix[s]]
            for i in range(s, e):
                if t[i] - prev >= period:
                    keep[i] = True
                    prev = t[i]
            last[pix[s]] = prev
        return pix[keep], t[keep], pol[keep]

    def _noise(self, t0: int, t1: int) -> Events:
        """Background activity: Poisson events at uniform pixels and times, random polarity."""
        rate = self.cfg.noise_rate_hz * self.h * self.w * (t1 - t0) * 1e-9
        n = int(self.rng.poisson(rate))
        return Events(self.rng.integers(0, self.w, n).astype(np.uint16),
                      self.rng.integers(0, self.h, n).astype(np.uint16),
                      self.rng.integers(t0 + 1, t1 + 1, n).astype(np.int64),
                      self.rng.choice(np.array([-1, 1], np.int8), n))
