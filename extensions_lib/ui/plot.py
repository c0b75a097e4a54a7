"""The loss curve as a small PNG drawn with Pillow: identical on every gradio version, no plotting
library, readable on light and dark themes (transparent background, mid-grey ink)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

INK = (128, 128, 128, 255)
GRID = (128, 128, 128, 60)
RAW = (249, 115, 22, 90)       # each step's loss, faint
SMOOTH = (249, 115, 22, 255)   # moving average
VALIDATION = (59, 130, 246, 255)   # validation loss: blue, apart from the training loss's orange


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)    # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()             # Pillow 9.5 (the WebUI's pin): bitmap font


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _thin(values: Sequence[float], limit: int) -> list[tuple[int, float]]:
    """(step, value) pairs, at most `limit` of them (bucket means keep the shape of long runs)."""
    n = len(values)
    if n <= limit:
        return [(i + 1, v) for i, v in enumerate(values)]
    out = []
    for b in range(limit):
        lo, hi = b * n // limit, max(b * n // limit + 1, (b + 1) * n // limit)
        chunk = values[lo:hi]
        out.append(((lo + hi) // 2 + 1, sum(chunk) / len(chunk)))
    return out


def _nice_ticks(x_max: int, target: int = 5) -> list[int]:
    """Round step numbers (1, 2, 2.5 or 5 times a power of ten apart) from 1 to x_max."""
    raw = max(1.0, (x_max - 1) / (target - 1))
    power = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 2.5, 5, 10) if power >= 10 else (1, 2, 5, 10)
    step = next(m * power for m in steps if m * power >= raw)
    ticks = [1] + [int(k * step) for k in range(1, int(x_max // step) + 1) if k * step > 1]
    return ticks


def _finite_points(points: Optional[Sequence]) -> list[tuple[int, float]]:
    out = []
    for point in points or ():
        step, value = point
        if value is not None and math.isfinite(float(value)):
            out.append((int(step), float(value)))
    return out


def loss_plot(losses: Sequence[float], total_steps: int = 0, width: int = 480, height: int = 200,
              scale: int = 2, val_losses: Optional[Sequence] = None) -> Optional[Image.Image]:
    """RGBA image of the loss per step (faint) and its moving average, and the validation loss
    ([step, loss] pairs) as a second line; None without data."""
    losses = [float(x) for x in losses if x is not None and math.isfinite(float(x))]
    val = _finite_points(val_losses)
    if not losses:
        return None
    W, H = width * scale, height * scale
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    font = _font(12 * scale)
    left, right, top, bottom = 56 * scale, 14 * scale, 26 * scale, 26 * scale
    pw, ph = W - left - right, H - top - bottom

    window = max(1, min(50, len(losses) // 10 or 1))
    smooth = moving_average(losses, window)
    lo, hi = min(losses + [v for _, v in val]), max(losses + [v for _, v in val])
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    pad = (hi - lo) * 0.05
    lo, hi = max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad
    x_max = max(total_steps, len(losses), max((s for s, _ in val), default=0), 2)

    def xy(step: float, v: float) -> tuple[float, float]:
        return left + (step - 1) / (x_max - 1) * pw, top + (1 - (v - lo) / (hi - lo)) * ph

    for i in range(5):   # horizontal grid with values
        v = lo + (hi - lo) * i / 4
        _, y = xy(1, v)
        draw.line([(left, y), (left + pw, y)], fill=GRID, width=scale)
        label = _fmt(v)
        tw = draw.textlength(label, font=font)
        draw.text((left - 6 * scale - tw, y - 6 * scale), label, fill=INK, font=font)
    for step in _nice_ticks(x_max):
        x, _ = xy(step, lo)
        label = str(step)
        tw = draw.textlength(label, font=font)
        draw.text((min(max(x - tw / 2, left - tw / 2), W - tw - 2), top + ph + 6 * scale), label,
                  fill=INK, font=font)
    draw.rectangle([left, top, left + pw, top + ph], outline=INK, width=scale)

    limit = pw // scale
    raw_pts = [xy(s, v) for s, v in _thin(losses, limit)]
    smooth_pts = [xy(s, v) for s, v in _thin(smooth, limit)]
    if len(raw_pts) == 1:
        x, y = raw_pts[0]
        r = 3 * scale
        draw.ellipse([x - r, y - r, x + r, y + r], fill=SMOOTH)
    else:
        draw.line(raw_pts, fill=RAW, width=scale, joint="curve")
        draw.line(smooth_pts, fill=SMOOTH, width=2 * scale, joint="curve")
    if val:
        pts = [xy(max(s, 1), v) for s, v in val]
        if len(pts) > 1:
            draw.line(pts, fill=VALIDATION, width=2 * scale, joint="curve")
        r = 2.5 * scale
        for x, y in pts:   # each measurement marked: they are few and far apart
            draw.ellipse([x - r, y - r, x + r, y + r], fill=VALIDATION)
    legend = f"loss  (avg of {window})  last {_fmt(smooth[-1])}"
    tw = draw.textlength(legend, font=font)
    draw.text((left + pw - tw - 6 * scale, top + 4 * scale), legend, fill=INK, font=font)
    if val:
        label = f"validation  last {_fmt(val[-1][1])}"
        tw = draw.textlength(label, font=font)
        draw.text((left + pw - tw - 6 * scale, top + 18 * scale), label, fill=VALIDATION, font=font)
    return img
