"""Phase 3: retrain without the n most negative instances and score the model.

The counterfactual replays the recorded training: from the checkpoint after
epoch K-1 (or from the initial parameters with --retrain_all), each recorded
batch in order, with its recorded augmentation seeds and learning rate, the
removed instances skipped and the gradient still divided by the recorded
|S_t|. With nothing removed it reproduces training bit for bit. Beyond plain
SGD the recorded recipe's optimizer continues from its state at that
checkpoint (train.trainer_at), a batch emptied by the removal still moving it.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from datasets import Data
from models import cnn
from .graphs import GraphCache, evaluate
from ..base.layout import step_record_path
from .step_record import StepRecord
from .train import perturb_half_ulp, replay_steps, trainer_at


def retrain(data: Data, run_dir: str, removed: np.ndarray, retrain_all: bool,
            batch_size: int, net: Callable = cnn,
            start_key: Optional[Sequence[int]] = None) -> List[Tuple[float, float, float, float]]:
    """Rows (val_loss, test_loss, val_accuracy, test_accuracy), one per retrained epoch. `start_key`: the
    starting checkpoint moved by `perturb_half_ulp(start_key)` first (a replay that differs from the
    recorded training by float32 rounding only; checks/rounding.py)."""
    record = StepRecord.load(step_record_path(run_dir))
    first = 0 if retrain_all else record.n_epochs - 1
    sgd = trainer_at(data, run_dir, record, first, batch_size, net)
    if start_key is not None:
        perturb_half_ulp(start_key)
    test_graphs = GraphCache(data.image_shape, data.n_classes, test=True, net=net)
    keep = np.ones(len(data.train), bool)
    keep[removed] = False
    rows = []
    for e in range(first, record.n_epochs):
        replay_steps(sgd, record, record.steps_of_epoch(e), keep)
        val_loss, val_acc = evaluate(test_graphs, data.normalize, data.val)
        test_loss, test_acc = evaluate(test_graphs, data.normalize, data.test)
        rows.append((val_loss, test_loss, val_acc, test_acc))
    return rows
