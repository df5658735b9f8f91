"""Datasets: in-memory uint8 images, the seeded train/validation split, and batches.

`load_dataset` is the one entry point; `Data` and `Split` are what every phase
(training, retrace, retraining) consumes.
"""
from .pipeline import CLASS_NAMES, Data, Split, load_dataset, DATASETS, default_data_dir

__all__ = ["CLASS_NAMES", "Data", "Split", "load_dataset", "DATASETS", "default_data_dir"]
