"""Index arithmetic for ragged arrays: flat values owned by objects in runs of given lengths.

Every stage of extraction turns "c_i things per object" into flat arrays (points per ring, pieces per
segment, spans per row); this is the one vectorised expansion they all share."""

from __future__ import annotations

import numpy as np


def ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts c_i: (owner index repeated c_i times, position 0..c_i-1 within the owner)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(owner.size) - starts[owner]
