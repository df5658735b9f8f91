"""Users' own data in the Neural Network Console (NNC) dataset CSV format.

    x:image,y:label
    images/cat/0001.png,3
    images/dog/0002.jpg,5

The header names the columns (others are ignored); image paths are relative
to the CSV's folder (absolute paths work too); labels are class indices
0, 1, 2, ... Rows are numbered as lines of the file, the header being row 1.
Images (PNG, JPEG or anything Pillow reads, 8 bits per channel) may be
grayscale or colour and of any size: all are resized to the model resolution
of the first training image (`short_edge_size`), so images of another shape
are stretched to it. The dataset has one channel if every image is
grayscale, else three (grayscale images repeated over R, G, B).
"""
from __future__ import annotations

import csv
import os
from typing import List, Tuple

import numpy as np

from sgd_influence.base.errors import UserError

IMAGE, LABEL = "x:image", "y:label"
GRAY_MODES = ("1", "L", "LA", "La")
COLOR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")

Row = Tuple[int, str, int]  # (row number in the file, absolute image path, label)


def _image_path(folder: str, text: str) -> str:
    path = os.path.normpath(os.path.join(folder, text))
    if not os.path.exists(path) and "\\" in text:  # a CSV written on Windows
        path = os.path.normpath(os.path.join(folder, text.replace("\\", "/")))
    return path


def read_rows(csv_path: str) -> List[Row]:
    """Parse an NNC dataset CSV; every problem is a UserError naming the file and row."""
    if not os.path.isfile(csv_path):
        raise UserError(f"{csv_path}: no such file")
    folder = os.path.dirname(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        while header is not None and not any(c.strip() for c in header):
            header = next(reader, None)
        if header is None:
            raise UserError(f"{csv_path}: empty file; expected the header {IMAGE},{LABEL} and one row per image")
        names = [c.strip() for c in header]
        if IMAGE not in names or LABEL not in names:
            raise UserError(f"{csv_path}: row {reader.line_num}: expected the header {IMAGE},{LABEL}, "
                            f"found {','.join(names)!r}")
        ci, cl = names.index(IMAGE), names.index(LABEL)
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            where = f"{csv_path}: row {reader.line_num}"
            if len(cells) <= max(ci, cl):
                raise UserError(f"{where}: {len(cells)} field(s), the header has {len(names)}")
            text, label = cells[ci].strip(), cells[cl].strip()
            if not text:
                raise UserError(f"{where}: empty {IMAGE}")
            if not (label.isascii() and label.isdigit()):
                raise UserError(f"{where}: label {label!r} is not a non-negative integer class index")
            path = _image_path(folder, text)
            if not os.path.isfile(path):
                raise UserError(f"{where}: image {path} not found (paths are relative to the CSV's folder)")
            rows.append((reader.line_num, path, int(label)))
    if not rows:
        raise UserError(f"{csv_path}: no data rows after the header")
    return rows


def read_image(path: str, where: str) -> np.ndarray:
    """(C, H, W) uint8 with C = 1 (grayscale) or 3 (anything else, alpha dropped)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in GRAY_MODES:
                a = np.asarray(im.convert("L"))[None]
            elif im.mode in COLOR_MODES:
                a = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
            else:
                raise UserError(f"{where}: image {path} has pixel mode {im.mode}; "
                                f"save it with 8 bits per channel (grayscale or RGB)")
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for unreadable or truncated files
        raise UserError(f"{where}: cannot read image {path} ({e})") from None
    return np.ascontiguousarray(a, dtype=np.uint8)
