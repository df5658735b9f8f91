from .cnn import cnn, Ops, WIDTHS
from .dense import dense
from .small import logreg, mlp

__all__ = ["cnn", "Ops", "WIDTHS", "dense", "logreg", "mlp"]
