"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip)."""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from sgd_influence.base.errors import UserError


def read_idx(path: str) -> np.ndarray:
    """Return the uint8 array stored in an IDX file (`.gz` or uncompressed).

    IDX header: two zero bytes, a type code (0x08 = uint8), the number of
    dimensions, then one big-endian uint32 per dimension.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path} ({e}); delete it (it is downloaded again on the next run)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file; delete it (it is downloaded again on the next run)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", ndim, offset=4))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape)


def find_idx(directory: str, stem: str) -> str | None:
    """Path of `stem` or `stem.gz` inside `directory`, or None."""
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None
