"""Real-image data: evaluation loaders with a teacher's own preprocessing."""

from dfq.data.datasets import build_eval_loader, eval_transform, load_dataset, stratified_indices

__all__ = ["build_eval_loader", "eval_transform", "load_dataset", "stratified_indices"]
