"""Charts small enough for the Dagster UI to draw in place, without a click.

The UI renders a markdown metadata value inline only when it is under 1,000 characters; a longer one
sits behind "[Show Markdown]" (dagster ui-core `MetadataEntry.tsx`), which is where every embedded PNG
ends up. So the asset pages carry a compact chart as well: a line chart as an SVG data URI with whole-
pixel coordinates and no fonts (the numbers go in the caption), bars as text in a code block. The
full-size PNGs stay behind the dialog and in the evaluation report.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from urllib.parse import quote

import dagster as dg
import numpy as np

from s2vec_core import s2

INLINE_LIMIT = 1000
"""Longest markdown value the UI renders in place."""

COLOURS = ("#17b", "#f80", "#888", "#2a2")
COLOUR_NAMES = ("blue", "orange", "grey", "green")
_MAX_POINTS = 24


def _inline(markdown: str) -> dg.MetadataValue:
    if len(markdown) >= INLINE_LIMIT:
        raise ValueError(
            f"inline chart of {len(markdown)} characters: the UI shows only < {INLINE_LIMIT} inline"
        )
    return dg.MetadataValue.md(markdown)


def _resampled(values: Sequence[float]) -> np.ndarray:
    """At most _MAX_POINTS values, first and last kept: a 30-epoch curve reads the same at 24."""
    y = np.asarray(values, dtype=float)
    if y.size <= _MAX_POINTS:
        return y
    return y[np.round(np.linspace(0, y.size - 1, _MAX_POINTS)).astype(int)]


def line_chart(
    series: Mapping[str, Sequence[float]],
    title: str,
    dashed: frozenset[str] = frozenset(),
    width: int = 240,
    height: int = 80,
) -> dg.MetadataValue:
    """Up to four series over a shared y range (0 to the max, so a plateau looks like one), as an
    inline SVG with a caption naming each line by colour with its first and last value."""
    if not series or len(series) > len(COLOURS):
        raise ValueError(f"line_chart draws 1 to {len(COLOURS)} series, got {len(series)}")
    finite = [v for vs in series.values() for v in vs if np.isfinite(v)]
    top = max(finite) if finite and max(finite) > 0 else 1.0
    n = max(len(v) for v in series.values())
    lines, caption = [], []
    for (name, values), colour, colour_name in zip(series.items(), COLOURS, COLOUR_NAMES):
        y = _resampled(values)
        x = np.linspace(0, width - 1, y.size) if y.size > 1 else np.zeros(1)
        px, py = np.round(x).astype(int), height - 1 - np.round(y / top * (height - 2)).astype(int)
        # A point level with both neighbours adds nothing to the line: a flat baseline is 2 points.
        keep = (
            np.r_[True, (py[1:-1] != py[:-2]) | (py[1:-1] != py[2:]), True]
            if py.size > 2
            else np.ones(py.size, bool)
        )
        points = ",".join(f"{a},{b}" for a, b in zip(px[keep], py[keep]))
        dash = " stroke-dasharray='4'" if name in dashed else ""
        lines.append(f"<polyline points='{points}' fill='none' stroke='{colour}'{dash}/>")
        caption.append(f"{colour_name}{' dashed' if dash else ''}: {name} {values[0]:.4g} → {values[-1]:.4g}")
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
        f"<rect width='{width}' height='{height}' fill='white' stroke='#ccc'/>{''.join(lines)}</svg>"
    )
    return _inline(
        f"![{title}]({_svg_uri(svg)})\n\n{title} over {n} epochs (y from 0): " + "; ".join(caption)
    )


def _svg_uri(svg: str) -> str:
    return "data:image/svg+xml," + quote(svg, safe="=',/:;.-")


def cell_map(
    cell_ids: np.ndarray, values: np.ndarray, title: str, side: int = 32, width: int = 192
) -> dg.MetadataValue:
    """Cells binned by centre into a map `side` pixels on its long side (shape kept true at the
    region's latitude), drawn `width` pixels wide: a scalar per cell in 7 viridis steps (mean per
    pixel), or an RGB row per cell (float [n, 3] in [0, 1]) in 15 colours. Blank where no cell is."""
    from PIL import Image

    lat, lng = s2.cell_center(s2.as_uint64(cell_ids))
    x = (lng - lng.min()) * np.cos(np.radians(lat.mean()))
    y = lat.max() - lat
    extent = max(float(x.max()), float(y.max())) or 1.0
    w, h = (max(1, round(side * float(v.max()) / extent)) for v in (x, y))
    col = np.minimum((x / extent * side).astype(int), w - 1)
    row = np.minimum((y / extent * side).astype(int), h - 1)
    v = np.asarray(values, dtype=float).reshape(len(cell_ids), -1)
    total, count = np.zeros((h, w, v.shape[1])), np.zeros((h, w, 1))
    np.add.at(total, (row, col), v)
    np.add.at(count, (row, col), 1)
    mean = total / np.maximum(count, 1)
    if v.shape[1] == 1:
        image = Image.fromarray(_viridis_steps(mean[..., 0], count[..., 0] > 0), mode="P")
        image.putpalette(_VIRIDIS_PALETTE)
    else:
        rgb = np.where(count > 0, np.clip(mean, 0, 1) * 255, 255).astype(np.uint8)
        image = Image.fromarray(rgb, mode="RGB").quantize(colors=15)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True, bits=4)  # 16 colours at most: 4 bits a pixel
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    scale = max(1, width // max(w, h))
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w * scale}' height='{h * scale}'>"
        f"<image width='{w * scale}' height='{h * scale}' style='image-rendering:pixelated' "
        f"href='data:image/png;base64,{png}'/></svg>"
    )
    return _inline(f"![map]({_svg_uri(svg)})\n\n{title}")


def _viridis_steps(values: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Palette index per pixel: 0 blank, 1-7 the value's step from the lowest to the highest."""
    lo, hi = float(values[filled].min()), float(values[filled].max())
    steps = 1 + np.round((values - lo) / ((hi - lo) or 1.0) * 6)
    return np.where(filled, steps, 0).astype(np.uint8)


# White, then 7 steps of viridis (dark blue -> yellow), padded to PIL's 256-entry palette.
_VIRIDIS_PALETTE = [
    255,
    255,
    255,
    68,
    1,
    84,
    68,
    57,
    131,
    49,
    104,
    142,
    33,
    145,
    140,
    53,
    183,
    121,
    143,
    215,
    68,
]
_VIRIDIS_PALETTE += [253, 231, 37] + [0] * (768 - 24)


def bar_chart(values: Mapping[str, float], title: str, width: int = 24) -> dg.MetadataValue:
    """Horizontal bars as text, longest first: `width` characters is the largest absolute value."""
    if not values:
        raise ValueError("bar_chart needs at least one value")
    top = max(abs(v) for v in values.values()) or 1.0
    label = max(len(k) for k in values)
    rows = []
    for name, value in sorted(values.items(), key=lambda kv: -kv[1]):
        eighths = round(abs(value) / top * width * 8)
        bar = "█" * (eighths // 8) + ("▏▎▍▌▋▊▉"[eighths % 8 - 1] if eighths % 8 else "")
        rows.append(f"{name:<{label}} {'-' if value < 0 else ' '}{bar:<{width}} {value:.3f}")
    return _inline(f"{title}\n```\n" + "\n".join(rows) + "\n```")
