"""`--log mlflow`: an MLflow run (the `mlflow` extra: mlflow-skinny, and SQLAlchemy for a local
store) in the tracking store of MLFLOW_TRACKING_URI, else --log-dir (a URI, or a folder that
gets an SQLite store, mlflow.db: MLflow 3 keeps its folder store for reading old runs only),
else <out>/mlflow.db, with the pictures beside it in mlartifacts/ (MLflow would put them in the
current folder); `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db` shows it. The
experiment is MLFLOW_EXPERIMENT_NAME's or "atrous". The run's parameters are the training configuration;
a resumed run logs into the same MLflow run (its id is kept in the training state)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from atrous.trackers.base import RunInfo, Tracker, metric_name, register_tracker

EXPERIMENT = "atrous"
STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"


def tracking_uri(run: RunInfo) -> tuple[str, str | None]:
    """The store's URI, and where a new experiment keeps its artifacts (None: the store decides)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    if run.log_dir and ":" in run.log_dir:
        return run.log_dir, None
    folder = os.path.abspath(run.log_dir or run.out)
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, STORE)}", Path(folder, ARTIFACTS).as_uri()


class MlflowTracker(Tracker):
    def __init__(self, run: RunInfo) -> None:
        from mlflow.tracking import MlflowClient

        uri, artifacts = tracking_uri(run)
        self.client = MlflowClient(tracking_uri=uri)
        if run.resumed_id:
            self.run_id = run.resumed_id
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment
                         else self.client.create_experiment(name, artifact_location=artifacts))
        self.run_id = self.client.create_run(experiment_id, run_name=run.name).info.run_id
        for key, value in _params(run.config).items():
            self.client.log_param(self.run_id, key, value)

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        metrics = [Metric(metric_name(k), float(v), stamp, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        for name, picture in images.items():
            self.client.log_image(self.run_id, picture, key=metric_name(name), step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _params(config: dict[str, Any]) -> dict[str, str]:
    """The configuration as MLflow parameters (text of at most 6000 characters)."""
    return {key: (value if isinstance(value, str) else json.dumps(value))[:6000] for key, value in config.items()}


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


@register_tracker("mlflow", needs="mlflow", extra="mlflow")
def open_mlflow(run: RunInfo) -> MlflowTracker:
    return MlflowTracker(run)
