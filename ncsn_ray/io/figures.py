"""PNG figures drawn with Pillow: image grids, 2-D scatter plots and score fields.

Nothing here imports Ray; it is shared by the jobs.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import DamagedInput

__all__ = ["to_uint8", "image_grid", "png_bytes", "decode_png", "decode_pngs", "scatter_panel", "field_panel", "hstack_panels",
           "loss_plot", "curve_plot"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` floats in [0, 1] -> ``(B, H, W, C)`` uint8 (clamped, rounded)."""
    arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def png_bytes(image_hwc: np.ndarray) -> bytes:
    """One ``(H, W, C)`` uint8 image (C = 1 or 3) encoded as PNG."""
    mode_image = Image.fromarray(image_hwc[..., 0] if image_hwc.shape[-1] == 1 else image_hwc)
    buffer = io.BytesIO()
    mode_image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes, channels: int) -> np.ndarray:
    """PNG bytes -> ``(H, W, channels)`` uint8; :class:`~ncsn_ray.errors.DamagedInput` if the
    bytes do not decode (the caller's message names the file)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DamagedInput(f"image bytes do not decode ({type(err).__name__}: {err})") from None
    return arr[..., None] if channels == 1 else arr


def decode_pngs(column: Sequence[bytes], channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """A column of PNG bytes -> ``(N, H, W, channels)`` uint8, every image ``size`` ``(H, W)``
    when given, else all of the first one's size; :class:`~ncsn_ray.errors.DamagedInput`
    naming the row that does not decode or does not fit."""
    images: list[np.ndarray] = []
    for row, data in enumerate(column):
        try:
            image = decode_png(data, channels)
        except DamagedInput as err:
            raise DamagedInput(f"row {row}: {err}") from None
        expected = tuple(size or (images[0].shape[:2] if images else image.shape[:2]))
        if image.shape[:2] != expected:
            raise DamagedInput(f"row {row} is a {image.shape[0]}x{image.shape[1]} image, "
                               f"expected {expected[0]}x{expected[1]}")
        images.append(image)
    if not images:
        return np.zeros((0, *(size or (0, 0)), channels), np.uint8)
    return np.stack(images)


def image_grid(images: torch.Tensor | np.ndarray, *, nrow: int | None = None, padding: int = 1, scale: int = 1) -> Image.Image:
    """Tile ``(B, C, H, W)`` floats in [0, 1] (or ``(B, H, W, C)`` uint8) into one image."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else images
    b, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    rows = int(math.ceil(b / nrow))
    canvas = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=np.uint8)
    for k in range(b):
        r, col = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top : top + h, left : left + w] = arr[k]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def _to_pixels(points: np.ndarray, lim: float, size: int) -> np.ndarray:
    return (points + lim) / (2 * lim) * (size - 1) * np.array([1, -1]) + np.array([0, size - 1])


def scatter_panel(points: torch.Tensor, *, lim: float = 8.0, size: int = 320, title: str = "") -> Image.Image:
    """2-D points on ``[-lim, lim]^2`` as dots (y axis up)."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.line([(size // 2, 0), (size // 2, size)], fill=(225, 225, 225))
    draw.line([(0, size // 2), (size, size // 2)], fill=(225, 225, 225))
    for x, y in _to_pixels(points.detach().cpu().numpy(), lim, size):
        draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(31, 119, 180))
    draw.rectangle([0, 0, size - 1, size - 1], outline="black")
    if title:
        draw.text((6, 4), title, fill="black")
    return img


def field_panel(
    grid: torch.Tensor,
    vectors: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
    lim: float = 8.0,
    size: int = 320,
    title: str = "",
) -> Image.Image:
    """Arrows ``vectors[k]`` at ``grid[k]`` (both ``(N, 2)``) over an optional ``(G, G)`` heat map in [0, 1]."""
    if background is not None:
        heat = (background.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        heat_rgb = np.stack([255 - heat // 3, 255 - heat, 255 - heat], axis=-1)
        img = Image.fromarray(np.flipud(heat_rgb)).resize((size, size), Image.BILINEAR)
    else:
        img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    vec = vectors.detach().cpu().numpy()
    norms = np.linalg.norm(vec, axis=1, keepdims=True)
    spacing = 2 * lim / max(1, int(math.sqrt(len(grid))))
    unit = vec / np.maximum(norms, 1e-12) * spacing * 0.8
    starts = _to_pixels(grid.detach().cpu().numpy(), lim, size)
    ends = _to_pixels(grid.detach().cpu().numpy() + unit, lim, size)
    for (x0, y0), (x1, y1) in zip(starts, ends):
        draw.line([(x0, y0), (x1, y1)], fill=(20, 20, 20))
        draw.ellipse([x1 - 1, y1 - 1, x1 + 1, y1 + 1], fill=(200, 30, 30))
    draw.rectangle([0, 0, size - 1, size - 1], outline="black")
    if title:
        draw.text((6, 4), title, fill="black")
    return img


def hstack_panels(panels: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels)
    out = Image.new("RGB", (width, height), "white")
    left = 0
    for p in panels:
        out.paste(p, (left, 0))
        left += p.width + gap
    return out


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _level_colour(i: int, n: int) -> tuple[int, int, int]:
    """From dark red (largest sigma, i = 0) to blue (smallest sigma)."""
    t = i / max(1, n - 1)
    return int(200 * (1 - t) + 20 * t), int(40 + 80 * t), int(40 * (1 - t) + 220 * t)


def loss_plot(steps: Sequence[int], per_level: Sequence[Sequence[float | None]], sigmas: Sequence[float], *,
              width: int = 640, height: int = 400, title: str = "loss per noise level") -> Image.Image:
    """Loss per noise level over training steps, log scale: one line per level.

    ``per_level[k][i]`` is the mean weighted loss of level ``i`` in the window ending at
    ``steps[k]`` (None where no example drew that level). Colours go from dark red (sigma_1)
    to blue (sigma_L); the legend names the first and last sigma.
    """
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 12, 24, height - 28
    values = [v for row in per_level for v in row if v is not None and v > 0 and math.isfinite(v)]
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 6), title, fill="black")
    if not values or len(steps) < 1:
        draw.text((left + 8, top + 8), "no data yet", fill="black")
        return img
    lo, hi = math.log10(min(values)), math.log10(max(values))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = min(steps), max(steps)
    span = max(x1 - x0, 1)

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x0) / span * (right - left)
        y = bottom - (math.log10(value) - lo) / (hi - lo) * (bottom - top)
        return x, y

    for decade in range(math.floor(lo), math.ceil(hi) + 1):
        if lo <= decade <= hi:
            _, y = xy(x0, 10.0**decade)
            draw.line([(left, y), (right, y)], fill=(230, 230, 230))
            draw.text((4, y - 6), f"1e{decade}", fill="black")
    draw.text((left, bottom + 6), f"step {x0}", fill="black")
    draw.text((right - 80, bottom + 6), f"step {x1}", fill="black")
    levels = len(sigmas)
    for i in range(levels):
        points = [xy(step, row[i]) for step, row in zip(steps, per_level)
                  if i < len(row) and row[i] is not None and row[i] > 0 and math.isfinite(row[i])]
        colour = _level_colour(i, levels)
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points[-1:]:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    draw.text((right - 230, top + 4), f"sigma_1={sigmas[0]:.3g}", fill=_level_colour(0, levels))
    draw.text((right - 110, top + 4), f"sigma_L={sigmas[-1]:.3g}", fill=_level_colour(levels - 1, levels))
    return img


_SERIES_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
                   (140, 86, 75), (127, 127, 127)]


def curve_plot(series: dict[str, Sequence[tuple[float, float]]], *, x_label: str, y_label: str, title: str = "",
               log_x: bool = True, log_y: bool = False, reference: tuple[str, float] | None = None,
               width: int = 720, height: int = 440) -> Image.Image:
    """Lines of ``(x, y)`` points, one per named series (e.g. a metric against network
    evaluations per sample, one line per sampler); ``log_x`` / ``log_y`` put an axis on a log
    scale (positive values only); ``reference = (label, y)`` draws a dashed horizontal line."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 64, width - 170, 44, height - 40
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 6), title, fill="black")
    points = [p for pts in series.values() for p in pts if all(math.isfinite(v) for v in p)]
    if not points:
        draw.text((left + 8, top + 8), "no data", fill="black")
        return img
    if log_y:
        points = [p for p in points if p[1] > 0]
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs = [fx(x) for x, _ in points]
    ys = [fy(y) for _, y in points] + ([fy(reference[1])] if reference else [])
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = (min(ys), max(ys)) if log_y else (min(0.0, min(ys)), max(ys) * 1.05)
    x_span, y_span = max(x_hi - x_lo, 1e-9), max(y_hi - y_lo, 1e-9)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + (fx(x) - x_lo) / x_span * (right - left), bottom - (fy(y) - y_lo) / y_span * (bottom - top))

    for k in range(5):
        level = y_lo + k * y_span / 4
        y = 10**level if log_y else level
        _, py = xy(10**x_lo if log_x else x_lo, y)
        draw.line([(left, py), (right, py)], fill=(230, 230, 230))
        draw.text((6, py - 6), f"{y:.3g}", fill="black")
    last_px = -1e9
    for x in sorted({round(x) for x, _ in points}):
        px, _ = xy(x, 10**y_lo if log_y else y_lo)
        if px - last_px < 26:  # keep tick labels apart
            continue
        last_px = px
        draw.line([(px, bottom), (px, bottom + 4)], fill="black")
        draw.text((px - 8, bottom + 6), f"{x:g}", fill="black")
    draw.text((left + (right - left) // 2 - 40, bottom + 22), x_label, fill="black")
    draw.text((6, top - 18), y_label, fill="black")
    if reference is not None:
        _, py = xy(10**x_lo if log_x else x_lo, reference[1])
        for px in range(left, right, 12):
            draw.line([(px, py), (min(px + 6, right), py)], fill=(90, 90, 90))
        draw.text((right + 8, py - 6), reference[0], fill=(90, 90, 90))
    for k, (name, pts) in enumerate(series.items()):
        colour = _SERIES_COLOURS[k % len(_SERIES_COLOURS)]
        pixels = [xy(x, y) for x, y in sorted(pts) if math.isfinite(x) and math.isfinite(y)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((right + 8, top + 4 + 16 * k), name, fill=colour)
    return img
