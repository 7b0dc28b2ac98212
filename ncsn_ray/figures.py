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

__all__ = ["to_uint8", "image_grid", "png_bytes", "decode_png", "scatter_panel", "field_panel", "hstack_panels"]


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
    """PNG bytes -> ``(H, W, channels)`` uint8."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


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
