from .cnn import cnn, Ops, WIDTHS
from .small import logreg, mlp

__all__ = ["cnn", "Ops", "WIDTHS", "logreg", "mlp"]
