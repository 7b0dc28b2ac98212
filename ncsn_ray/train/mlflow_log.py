"""Experiment tracking in MLflow (``--tracking mlflow``), written by rank 0 only.

The server is the user's: ``MLFLOW_TRACKING_URI`` (required) names it, and
``MLFLOW_EXPERIMENT_NAME`` the experiment (default ``ncsn-on-ray``). The driver checks them
before any work starts and ships the two values to the workers; credentials
(``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) are never shipped or
written anywhere: the nodes' own environment provides them, as for object storage. A URI
with a password in it is refused.

One training run is one MLflow run, however often it is resumed or restarted: the first
attempt creates it (run name = the run's name, the config's values as params, tag
``ncsn.run_folder``) and writes its id to ``{run}/mlflow.json`` at once; every later attempt
(``train.py`` re-run, or Ray Train restarting a failed worker) continues that run. Logged:
at every log window ``loss``, ``loss_per_sigma/L{i}_sigma{value}``, ``images_per_s`` and
``learning_rate``; at every checkpoint the preview grid as the image ``samples``. The run is
marked finished when training reaches its last step. A restart from the step-k checkpoint
logs steps after k again; as training is replayed bit-identically, the repeated values are
the same (only ``images_per_s`` differs), and MLflow keeps both points.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from typing import Any, Sequence

from ..errors import UserError
from ..io.storage import Storage

__all__ = ["MlflowLog", "RUN_ID_FILE", "SHIPPED_ENV", "check_mlflow_settings"]

RUN_ID_FILE = "mlflow.json"
DEFAULT_EXPERIMENT = "ncsn-on-ray"
# What the workers need from the driver's environment (no credentials). The file-store
# switch lets tests (and users who choose it) use MLflow's local file backend.
SHIPPED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE")


def check_mlflow_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment to ship to the workers for ``--tracking mlflow``; a :class:`UserError`
    when MLflow is not installed, no tracking URI is set, or the URI carries a password."""
    environ = dict(os.environ if environ is None else environ)
    try:
        import mlflow  # noqa: F401
    except ImportError as err:
        raise UserError("--tracking mlflow needs the MLflow client: pip install 'ncsn-on-ray[mlflow]' "
                        "(or mlflow-skinny)") from err
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise UserError("--tracking mlflow needs MLFLOW_TRACKING_URI: the address of your MLflow tracking server "
                        "(e.g. http://mlflow.internal:5000, or databricks)")
    if urllib.parse.urlsplit(uri).password is not None:
        raise UserError("MLFLOW_TRACKING_URI holds a password; give credentials to the nodes as "
                        "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead")
    return {key: environ[key] for key in SHIPPED_ENV if environ.get(key)}


def _flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class MlflowLog:
    """Rank 0's MLflow writer for the run folder ``run``: creates or continues its MLflow run."""

    def __init__(self, run: Storage, run_name: str, config: dict[str, Any], sigmas: Sequence[float],
                 env: dict[str, str]):
        os.environ.update(env)  # this worker process only: where the client finds the server
        from mlflow import MlflowClient

        self.sigmas = [float(s) for s in sigmas]
        self.client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        if run.exists(RUN_ID_FILE):
            self.run_id = run.read_json(RUN_ID_FILE)["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment_name = env.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        created = self.client.create_run(experiment_id, run_name=run_name, tags={"ncsn.run_folder": run.uri})
        self.run_id = created.info.run_id
        run.write_json(RUN_ID_FILE, {"run_id": self.run_id, "experiment_id": experiment_id,
                                     "experiment_name": experiment_name})
        from mlflow.entities import Param

        params = [Param(key, value[:6000]) for key, value in sorted(_flat_params(config).items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def window(self, step: int, loss: float, per_sigma: Sequence[float | None], images_per_s: float,
               learning_rate: float, workers: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {"loss": loss, "images_per_s": images_per_s, "learning_rate": learning_rate}
        if workers is not None:
            values["workers"] = float(workers)
        for i, (sigma, value) in enumerate(zip(self.sigmas, per_sigma)):
            if value is not None:
                values[f"loss_per_sigma/L{i:02d}_sigma{sigma:.4g}"] = value
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def image(self, step: int, grid: Any) -> None:
        self.client.log_image(self.run_id, grid.convert("RGB"), key="samples", step=step)

    def checkpoint_done(self) -> None:
        """Nothing to do: every value went to the server when it was logged."""

    def close(self, finished: bool) -> None:
        if finished:
            self.client.set_terminated(self.run_id, status="FINISHED")
