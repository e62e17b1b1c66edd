"""The S2 grid of a run: image level, pixel level and the levels features are kept at.

This is the one place that holds the default levels; everything else takes levels as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from s2vec_core.taxonomy import CHANNEL_NAMES

MAX_LEVEL = 26
"""Finest level features (and so pixels) can be at: extraction keys a row by cell id | channel index,
and the index must fit below the trailing bit of a level-26 id. (S2 itself goes to `s2.MAX_LEVEL` 30.)"""
MAX_IMAGE_K = 7
"""At most 2**7 x 2**7 pixels per image: one image holds channels x 4**k float32 values (92 channels:
6 MB at k = 7, 386 MB at k = 10, where a 32-image batch no longer fits a 24 GiB machine)."""


def check_image_levels(image_level: int, pixel_level: int) -> None:
    """ValueError unless 0 <= image_level < pixel_level <= MAX_LEVEL and the image is at most
    2**MAX_IMAGE_K pixels on a side."""
    if not 0 <= image_level < pixel_level <= MAX_LEVEL:
        raise ValueError(
            f"need 0 <= image_level < pixel_level <= {MAX_LEVEL}, got {image_level}/{pixel_level}"
        )
    if pixel_level - image_level > MAX_IMAGE_K:
        side = 1 << (pixel_level - image_level)
        mb = side * side * 4 * len(CHANNEL_NAMES) / 2**20
        raise ValueError(
            f"image level {image_level} with pixel level {pixel_level} makes images of {side} x {side} "
            f"pixels (~{mb:,.0f} MB each with the taxonomy's {len(CHANNEL_NAMES)} channels); images may be "
            f"at most {1 << MAX_IMAGE_K} pixels on a side: raise image_level to "
            f"{pixel_level - MAX_IMAGE_K} or more (the defaults make 16 x 16)"
        )


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
        check_image_levels(self.image_level, self.pixel_level)
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
