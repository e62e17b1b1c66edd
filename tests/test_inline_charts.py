"""Inline charts stay under the UI's inline limit and draw what they are given."""

import re
import xml.etree.ElementTree as ET
from urllib.parse import unquote

import numpy as np
import pytest

from s2vec_assets.inline_charts import INLINE_LIMIT, bar_chart, cell_map, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def _svg(markdown: str) -> ET.Element:
    uri = re.fullmatch(r"!\[[^\]]*\]\(data:image/svg\+xml,([^)]*)\)", markdown.split("\n\n")[0])
    assert uri, markdown[:120]
    return ET.fromstring(unquote(uri.group(1)))


def test_a_thirty_epoch_loss_chart_is_inline_svg_with_one_line_per_series():
    losses = list(0.15 + 0.3 * np.exp(-np.arange(30) / 8))
    held = [v * 1.05 for v in losses]
    md = line_chart(
        {"training": losses, "held-out": held, "baseline": [0.2] * 30},
        "MAE loss",
        dashed=frozenset({"baseline"}),
    ).value
    assert len(md) < INLINE_LIMIT
    lines = _svg(md).findall(f"{SVG}polyline")
    assert len(lines) == 3
    points = [np.array(line.get("points").split(","), dtype=int).reshape(-1, 2) for line in lines]
    # Decreasing loss: y pixels grow (downwards) along the line; the flat baseline is two points.
    assert (np.diff(points[0][:, 1]) >= 0).all() and points[0][-1, 1] > points[0][0, 1]
    assert len(points[2]) == 2 and lines[2].get("stroke-dasharray")
    assert "training 0.45 → 0.158" in md and "grey dashed: baseline" in md


def test_bars_are_sorted_signed_and_scaled_to_the_largest():
    md = bar_chart({"raw": 0.9, "s2vec": 0.45, "random": -0.1}, "income R2").value
    rows = md.split("```")[1].strip().splitlines()
    assert [r.split()[0] for r in rows] == ["raw", "s2vec", "random"]
    assert rows[0].count("█") == 24 and rows[1].count("█") == 12 and "-" in rows[2]


def test_a_chart_too_long_to_show_inline_is_refused():
    with pytest.raises(ValueError, match="inline"):
        bar_chart({f"feature_set_{i}": i / 40 for i in range(40)}, "too many")


def test_a_cell_map_keeps_the_region_shape_and_marks_the_busy_cells():
    import base64
    import io

    from PIL import Image

    from s2vec_core import s2

    # A 12 x 24 block of level-14 cells (twice as tall as wide), busiest in its top row.
    lat, lng = np.meshgrid(np.linspace(47.00, 47.24, 24), np.linspace(9.50, 9.68, 12), indexing="ij")
    cells = np.unique(s2.latlng_to_cell_id(lat.ravel(), lng.ravel(), 14))
    clat, _ = s2.cell_center(cells)
    values = (clat > 47.23).astype(float)
    md = cell_map(cells, values, "busy north").value
    assert len(md) < INLINE_LIMIT and md.endswith("busy north")
    png = _svg(md).find(f"{SVG}image").get("href").split("base64,")[1]
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))
    h, w, _ = image.shape
    assert max(h, w) == 32 and 1.5 < h / w < 3
    # Yellow (the highest viridis step) only in the top rows.
    yellow = (image[..., 0] > 200) & (image[..., 1] > 200) & (image[..., 2] < 100)
    assert yellow[:3].any() and not yellow[6:].any()
