"""OSM PBF -> per-cell channel values: the public face of the package (see `extract` for the method).

- `reader`: pyosmium (file checks, header and counts, the per-object callbacks);
- `wkb`: hex WKB from pyosmium -> flat numpy arrays;
- `geometry`: lengths, centroids, areas, and cutting geometry into S2 cells;
- `extract`: the extractor (chunks of objects -> rows) and its processes;
- `aggregate`: running (cell, channel) sums and the long -> wide pivot.
"""

from s2vec_core.grid import MAX_LEVEL
from s2vec_core.osm.aggregate import Aggregate, pivot, wide
from s2vec_core.osm.extract import Extractor, extract_cells, extract_cells_long
from s2vec_core.osm.geometry import EARTH_RADIUS_M, piece_length_m, wrap_deg
from s2vec_core.osm.reader import OSMFileError, check_path, header_bbox, pbf_info

__all__ = [
    "EARTH_RADIUS_M",
    "MAX_LEVEL",
    "Aggregate",
    "Extractor",
    "OSMFileError",
    "check_path",
    "extract_cells",
    "extract_cells_long",
    "header_bbox",
    "pbf_info",
    "piece_length_m",
    "pivot",
    "wide",
    "wrap_deg",
]
