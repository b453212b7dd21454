"""The IDX file format of MNIST and Fashion-MNIST (only the uint8 type, the one they use).

Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then
one big-endian u32 per dimension; the data follows in C order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file of unsigned bytes, gzipped when the name ends in `.gz`."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header")
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != UBYTE:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes), file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file (magic 0x0000080N, N = ndim), gzipped when the
    name ends in `.gz` (with mtime 0, so the same data always gives the same bytes)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer takes uint8, got {array.dtype}")
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path = Path(path)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(header + array.tobytes())
    else:
        path.write_bytes(header + array.tobytes())
