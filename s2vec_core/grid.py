"""The S2 grid of a run: image level, pixel level and the levels features are kept at.

This is the one place that holds the default levels; everything else takes levels as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LEVEL = 30


@dataclass(frozen=True)
class Grid:
    """Image cells at `image_level`, each an image of `2**k x 2**k` pixel cells at `pixel_level`.

    The defaults (13/17, 16x16 pixels) suit small city extracts; countries use 8/12 (see README).
    `feature_levels` are the levels `cell_features` is written at; it must include both.
    `context_ring` image cells on each side of an image cell form its context window, seen at
    `context_level` (image level + 1: each neighbour as 2 x 2 quadrants), so an embedding carries the
    neighbourhood (~2.5 km around a city-grid cell at ring 2), not only the cell's own contents.
    """

    image_level: int = 13
    pixel_level: int = 17
    feature_levels: tuple[int, ...] = field(default=(13, 15, 17))
    context_ring: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.image_level < self.pixel_level <= MAX_LEVEL:
            raise ValueError(
                f"need 0 <= image_level < pixel_level <= {MAX_LEVEL}, got {self.image_level}/{self.pixel_level}"
            )
        levels = tuple(sorted(set(self.feature_levels)))
        if any(not 0 <= lv <= MAX_LEVEL for lv in levels):
            raise ValueError(f"feature levels must be within 0..{MAX_LEVEL}, got {self.feature_levels}")
        missing = {self.image_level, self.pixel_level} - set(levels)
        if missing:
            raise ValueError(
                f"feature_levels {levels} must include the image and pixel levels {sorted(missing)}"
            )
        if max(levels) != self.pixel_level:
            raise ValueError(
                f"the pixel level {self.pixel_level} must be the finest feature level, got {levels}"
            )
        if self.context_ring < 0:
            raise ValueError(f"context_ring must be >= 0, got {self.context_ring}")
        object.__setattr__(self, "feature_levels", levels)

    @property
    def k(self) -> int:
        return self.pixel_level - self.image_level

    @property
    def image_size(self) -> int:
        """Pixels per image side (`2**k`)."""
        return 1 << self.k

    @property
    def context_level(self) -> int:
        return self.image_level + 1

    @property
    def context_size(self) -> int:
        """Context pixels per side: (2 * ring + 1) image cells of 2 x 2 quadrants (0 without context)."""
        return (
            (2 * self.context_ring + 1) * (1 << (self.context_level - self.image_level))
            if self.context_ring
            else 0
        )
