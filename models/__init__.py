from .cnn import cnn, Ops, WIDTHS

__all__ = ["cnn", "Ops", "WIDTHS"]
