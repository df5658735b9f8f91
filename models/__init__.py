from .cnn import cnn, WIDTHS

__all__ = ["cnn", "WIDTHS"]
