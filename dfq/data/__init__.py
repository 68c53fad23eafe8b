"""Real-image data: evaluation loaders with a teacher's own preprocessing."""

from dfq.data.datasets import (
    SPLITS,
    build_eval_loader,
    eval_transform,
    load_dataset,
    real_calibration_loader,
    split_indices,
    stratified_indices,
)

__all__ = ["SPLITS", "build_eval_loader", "eval_transform", "load_dataset", "real_calibration_loader", "split_indices",
           "stratified_indices"]
