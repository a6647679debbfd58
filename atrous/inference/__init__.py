"""Inference: `infer` (views, precision, batch-norm folding), evaluation over a dataset,
prediction over files, folders and videos, and the CRF that refines the scores."""

from atrous.inference.evaluate import evaluate, format_table
from atrous.inference.infer import Views, infer, make_views
from atrous.inference.predict import predict

__all__ = ["Views", "evaluate", "format_table", "infer", "make_views", "predict"]
