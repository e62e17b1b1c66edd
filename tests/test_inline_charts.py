"""Inline charts stay under the UI's inline limit and draw what they are given."""

import re
import xml.etree.ElementTree as ET
from urllib.parse import unquote

import numpy as np
import pytest

from s2vec_assets.inline_charts import INLINE_LIMIT, bar_chart, line_chart

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
