"""The images of users' Neural Network Console (NNC) dataset CSVs (the CSV itself: nnc_dataset.py).

    x:image,y:label
    images/cat/0001.png,3
    images/dog/0002.jpg,5

Image paths are relative to the CSV's folder (absolute paths work too). Images
(PNG, JPEG or anything Pillow reads, 8 bits per channel) may be grayscale or colour and of any size: all are resized to the model resolution
of the first training image (`short_edge_size`), so images of another shape
are stretched to it. The dataset has one channel if every image is
grayscale, else three (grayscale images repeated over R, G, B).
"""
from __future__ import annotations

import os

import numpy as np

from sgd_influence.base.errors import UserError

GRAY_MODES = ("1", "L", "LA", "La")
COLOR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def image_path(folder: str, text: str) -> str:
    """The absolute path of a file named in a CSV of `folder` (relative to it, or absolute)."""
    path = os.path.normpath(os.path.join(folder, text))
    if not os.path.exists(path) and "\\" in text:  # a CSV written on Windows
        path = os.path.normpath(os.path.join(folder, text.replace("\\", "/")))
    return path


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
