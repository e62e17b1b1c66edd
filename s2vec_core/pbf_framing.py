"""Check that a file is framed like an OSM PBF, reading only the fileblock headers.

Why this exists: a download cut short, or an HTML error page served with HTTP 200, must never be renamed
into the extract cache, and a poisoned cache file must be noticed before osmium fails on it run after
run. Decoding the blobs (zlib, then the OSM primitives) would be a full read of the extract; the framing
alone catches what a broken transfer produces (a truncated fileblock, trailing garbage, a file that is
not a PBF at all) at the cost of one small read and one seek per fileblock, so it stays cheap even for
country-sized extracts. It is pure Python on purpose (no osmium, no protobuf package): a few lines of
varint decoding read the three BlobHeader fields. What it cannot see is a cut exactly between two
fileblocks, which is still a well-framed file; the downloader checks the byte count against
Content-Length for that.

The framing (https://wiki.openstreetmap.org/wiki/PBF_Format): the file is a sequence of fileblocks,
each a 4-byte big-endian length of the BlobHeader, the BlobHeader (a protobuf message: 1 `type` string,
2 `indexdata` bytes, 3 `datasize` int32) and `datasize` bytes of Blob. The first BlobHeader's type must
be "OSMHeader"; the last Blob must end exactly at end of file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAX_HEADER_BYTES = 64 * 1024
"""The format's limit on a BlobHeader."""
MAX_BLOB_BYTES = 32 * 1024 * 1024
"""The format's limit on a Blob."""


class PBFFramingError(ValueError):
    """The file is not a complete OSM PBF; the message says where the framing breaks."""


@dataclass(frozen=True)
class FileBlock:
    offset: int
    """Byte offset of the block's 4-byte length prefix."""
    type: str
    header_size: int
    data_size: int

    @property
    def end(self) -> int:
        """Byte offset just past the block's Blob (the next block's offset)."""
        return self.offset + 4 + self.header_size + self.data_size


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise PBFFramingError("truncated or overlong varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _blob_header(buf: bytes) -> tuple[str, int]:
    """(type, datasize) of a BlobHeader message; unknown fields are skipped."""
    kind: str | None = None
    size: int | None = None
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            if field == 3:
                size = value
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise PBFFramingError(f"field {field} runs past the end of the BlobHeader")
            if field == 1:
                try:
                    kind = buf[i : i + n].decode("utf-8")
                except UnicodeDecodeError:
                    raise PBFFramingError("BlobHeader type is not text") from None
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise PBFFramingError(f"BlobHeader field {field} has invalid wire type {wire}")
    if i != len(buf):
        raise PBFFramingError("a field runs past the end of the BlobHeader")
    if kind is None or size is None:
        raise PBFFramingError("BlobHeader lacks its type or datasize")
    return kind, size


def iter_fileblocks(f: BinaryIO, size: int | None = None) -> Iterator[FileBlock]:
    """Yield the fileblocks of an open binary file from its current position, seeking past each Blob.

    Raises PBFFramingError at the first block that is cut short, oversized or malformed, and when the
    first block is not an OSMHeader. `size` is the file's length (taken from the file when omitted).
    """
    if size is None:
        size = os.fstat(f.fileno()).st_size
    offset = f.tell()
    first = True
    while offset < size:
        prefix = f.read(4)
        if len(prefix) < 4:
            raise PBFFramingError(f"file ends inside the length prefix of the block at byte {offset}")
        header_size = int.from_bytes(prefix, "big")
        if header_size == 0 or header_size > MAX_HEADER_BYTES:
            what = "not an OSM PBF file" if first else f"corrupt block length at byte {offset}"
            raise PBFFramingError(f"{what} (BlobHeader length {header_size})")
        header = f.read(header_size)
        if len(header) < header_size:
            raise PBFFramingError(f"file ends inside the BlobHeader of the block at byte {offset}")
        try:
            kind, data_size = _blob_header(header)
        except PBFFramingError as e:
            what = "not an OSM PBF file" if first else f"corrupt BlobHeader at byte {offset}"
            raise PBFFramingError(f"{what} ({e})") from None
        if first and kind != "OSMHeader":
            raise PBFFramingError(f"not an OSM PBF file (first block is {kind!r}, not 'OSMHeader')")
        if data_size > MAX_BLOB_BYTES:
            raise PBFFramingError(f"block at byte {offset} claims a {data_size}-byte Blob (limit 32 MiB)")
        block = FileBlock(offset, kind, header_size, data_size)
        if block.end > size:
            raise PBFFramingError(
                f"file is truncated: the block at byte {offset} needs {block.end} bytes, the file has {size}"
            )
        yield block
        offset = block.end
        f.seek(offset)
        first = False
    if first:
        raise PBFFramingError("empty file")


def check_pbf_framing(path: str | os.PathLike) -> list[FileBlock]:
    """The file's fileblocks; PBFFramingError unless it is a complete, well-framed OSM PBF."""
    with open(path, "rb") as f:
        return list(iter_fileblocks(f))
