"""Experiment tracking: one small logger interface for every trainer, fanned out to the run's own files and, when
asked, to TensorBoard and MLflow.

A trainer opens its trackers once (:func:`open_trackers`), logs its configuration (``log_params``), one dict of
figures per epoch (``log_metrics``) and closes them. The run's own log (``metrics.jsonl`` of the classifiers,
``history.csv`` of the lung model) is always one of them and is written as before; the others are off by
default (:class:`TrackingSettings`, ``--track tensorboard|mlflow`` on the command line):

- ``tensorboard``: event files in ``RUN/tensorboard`` (``torch.utils.tensorboard``; needs the ``tensorboard``
  package). A run that starts again at epoch N purges the events of epochs N and later, as the run's own log does.
- ``mlflow``: one MLflow run per training process (``mlflow-skinny``), in a SQLite database ``RUN/mlruns/mlflow.db``
  by default (nothing leaves the machine; MLflow's telemetry is off unless ``MLFLOW_DISABLE_TELEMETRY`` says
  otherwise) or at the tracking URI given (``--tracking-uri``, e.g. a team's server).

The packages are imported only when a tracker is asked for, so ``unveil --help`` stays fast; a missing one is a
:class:`TrackingError` saying what to install. A tracker that fails while training (a server gone) is dropped
with a warning: the training and its own log go on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from unveil.errors import UnveilError

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow")
#: The packages each tracker needs (import names) and what to install when one is missing.
PACKAGES = {"tensorboard": (("tensorboard",), "pip install tensorboard"),
            "mlflow": (("mlflow", "sqlalchemy", "alembic"), "pip install mlflow-skinny sqlalchemy alembic")}
TENSORBOARD_FOLDER = "tensorboard"
MLFLOW_FOLDER = "mlruns"
MLFLOW_EXPERIMENT = "unveil"
#: MLflow's limits: parameters per batch call and characters of a parameter value.
_PARAMS_PER_CALL, _PARAM_CHARS = 100, 6000


class TrackingError(UnveilError, ValueError):
    """A tracker cannot be used as asked: an unknown name, a missing package, a tracking URI refused."""


@dataclass(frozen=True)
class TrackingSettings:
    """Which trackers a training logs to (none by default), and where MLflow's runs go.

    ``uri``: the MLflow tracking URI (None: a SQLite database in ``RUN/mlruns``); ``experiment``: the MLflow
    experiment the runs belong to. Picklable: grid jobs carry it to other processes."""

    track: tuple[str, ...] = ()
    uri: str | None = None
    experiment: str = MLFLOW_EXPERIMENT

    def __post_init__(self) -> None:
        asked = (self.track,) if isinstance(self.track, str) else self.track  # "mlflow" is one tracker, not six
        names = tuple(dict.fromkeys(str(name).strip().lower() for name in asked))
        unknown = [name for name in names if name not in TRACKERS]
        if unknown:
            raise TrackingError(f"unknown tracker {', '.join(map(repr, unknown))}; choose from {', '.join(TRACKERS)}")
        if self.uri is not None and "mlflow" not in names:
            raise TrackingError(f"a tracking URI ({self.uri}) is for MLflow: add --track mlflow (or mlflow to "
                                "tracking.track)")
        object.__setattr__(self, "track", names)
        for name in names:
            modules, install = PACKAGES[name]
            missing = [module for module in modules if importlib.util.find_spec(module) is None]
            if missing:
                raise TrackingError(f"--track {name} needs the package(s) {', '.join(missing)}, not installed: "
                                    f"{install} (or pip install 'unveil-cxr[tracking]')")

    @property
    def enabled(self) -> bool:
        return bool(self.track)

    def under(self, folder: str | Path, experiment: str | None = None) -> TrackingSettings:
        """These settings with MLflow's runs in ``folder/mlruns`` unless a URI was given (a grid's cells share
        one database), and in ``experiment`` when given."""
        uri = self.uri
        if "mlflow" in self.track and uri is None:
            uri = local_mlflow_uri(folder)
        return replace(self, uri=uri, experiment=experiment or self.experiment)


class Tracker(Protocol):
    """What every trainer logs to: its configuration once, figures once per epoch, then close."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


class JsonlLog:
    """``metrics.jsonl``: one JSON line per epoch (every field of the record), started with the lines of the epochs
    a resumed run keeps."""

    def __init__(self, path: str | Path, history: Sequence[Mapping[str, Any]] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nothing: the run's configuration is in run.meta.json."""

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(dict(metrics)) + "\n")

    def close(self, failed: bool = False) -> None:
        """Nothing to close: every line is written whole when logged."""


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric figures of an epoch record (booleans, text and the step itself left out), as floats."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step")}


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``a.b: text`` pairs (what TensorBoard's text and MLflow's params take)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)[:_PARAM_CHARS]
    return flat


class TensorBoardTracker:
    """Scalars (one tag per figure, the epoch as step) and the parameters as a text table, in ``log_dir``."""

    def __init__(self, log_dir: str | Path, first_step: int = 1) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise TrackingError(f"--track tensorboard: {error} ({PACKAGES['tensorboard'][1]})") from None
        self.log_dir = Path(log_dir)
        try:  # purge_step: events of epochs >= first_step from an earlier attempt are dropped by readers
            self.writer = SummaryWriter(str(self.log_dir), purge_step=first_step)
        except OSError as error:
            raise TrackingError(f"{self.log_dir}: cannot write TensorBoard events: {error}") from None

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {key} | {value} |" for key, value in flatten(params).items())
        self._write(lambda: self.writer.add_text("parameters", f"| parameter | value |\n|---|---|\n{rows}"))

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        def write() -> None:
            for key, value in numbers(metrics).items():
                self.writer.add_scalar(key, value, global_step=step)
            self.writer.flush()  # readable while training runs

        self._write(write)

    def _write(self, action: Any) -> None:
        try:
            action()
        except OSError as error:
            raise TrackingError(f"{self.log_dir}: cannot write TensorBoard events: {error}") from None

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def local_mlflow_uri(folder: str | Path) -> str:
    """The SQLite tracking URI of ``folder/mlruns/mlflow.db`` (absolute; the folder is created)."""
    directory = Path(folder).resolve() / MLFLOW_FOLDER
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'mlflow.db'}"


def _mlflow() -> Any:
    """The MLflow modules this uses, imported now (telemetry off unless the environment says otherwise)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # "creating tables" at INFO: not news
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import mlflow.entities
        import mlflow.exceptions
        import mlflow.tracking
    except ImportError as error:
        raise TrackingError(f"--track mlflow: {error} ({PACKAGES['mlflow'][1]})") from None
    return mlflow


def mlflow_experiment(uri: str, name: str, artifacts: Path | None = None) -> str:
    """The id of MLflow experiment ``name`` at ``uri``, created when absent (its tables too: a grid's driver calls
    this once, before its jobs share the database)."""
    mlflow = _mlflow()
    try:
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name, artifact_location=artifacts.as_uri() if artifacts else None))
        except mlflow.exceptions.MlflowException:  # another process created it meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow tracking URI {uri}: {error.message}") from None


class MlflowTracker:
    """One MLflow run: the parameters, one metric per figure with the epoch as step, FINISHED or FAILED at the end."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None,
                 artifacts: Path | None = None) -> None:
        self._mlflow = _mlflow()
        self.uri = uri
        experiment_id = mlflow_experiment(uri, experiment, artifacts)
        self.client = self._mlflow.tracking.MlflowClient(tracking_uri=uri)
        self.run_id = self._call(lambda: self.client.create_run(experiment_id, run_name=run_name,
                                                                tags=dict(tags or {})).info.run_id)

    def _call(self, action: Any) -> Any:
        try:
            return action()
        except self._mlflow.exceptions.MlflowException as error:
            raise TrackingError(f"MLflow tracking URI {self.uri}: {error.message}") from None

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries = [self._mlflow.entities.Param(key, value) for key, value in flatten(params).items()]
        for start in range(0, len(entries), _PARAMS_PER_CALL):
            chunk = entries[start:start + _PARAMS_PER_CALL]
            self._call(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        now = int(time.time() * 1000)
        entries = [self._mlflow.entities.Metric(key, value, now, step) for key, value in numbers(metrics).items()
                   if not math.isinf(value)]
        self._call(lambda: self.client.log_batch(self.run_id, metrics=entries))

    def close(self, failed: bool = False) -> None:
        self._call(lambda: self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED"))


class Trackers:
    """The fan-out: every call goes to the run's own log(s) (``base``, whose errors propagate) and to the optional
    trackers (one that fails is dropped with a warning). A context manager: ``close(failed=...)`` on exit."""

    def __init__(self, base: Sequence[Tracker] = (), optional: Sequence[Tracker] = ()) -> None:
        self.base, self.optional = list(base), list(optional)

    def _each(self, call: str, *args: Any) -> None:
        for tracker in self.base:
            getattr(tracker, call)(*args)
        for tracker in list(self.optional):
            try:
                getattr(tracker, call)(*args)
            except TrackingError as error:
                log.warning("tracking stopped for this run: %s", error)
                self.optional.remove(tracker)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._each("log_params", params)

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._each("log_metrics", step, metrics)

    def close(self, failed: bool = False) -> None:
        self._each("close", failed)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.close(failed=kind is not None)

    def __iter__(self) -> Iterator[Tracker]:
        return iter([*self.base, *self.optional])


def open_trackers(settings: TrackingSettings | None, run_dir: str | Path, *, base: Sequence[Tracker] = (),
                  params: Mapping[str, Any] | None = None, first_step: int = 1,
                  tags: Mapping[str, str] | None = None) -> Trackers:
    """The trackers of one training run in ``run_dir``: ``base`` (its own log) and those ``settings`` ask for,
    opened now (a refused URI fails before the first epoch), with ``params`` logged."""
    run_dir = Path(run_dir)
    optional: list[Tracker] = []
    settings = settings or TrackingSettings()
    try:
        if "tensorboard" in settings.track:
            optional.append(TensorBoardTracker(run_dir / TENSORBOARD_FOLDER, first_step))
        if "mlflow" in settings.track:
            uri = settings.uri or local_mlflow_uri(run_dir)
            artifacts = run_dir.resolve() / MLFLOW_FOLDER / "artifacts" if settings.uri is None else None
            optional.append(MlflowTracker(uri, settings.experiment, run_dir.name,
                                          {"unveil.run_folder": str(run_dir), "unveil.first_epoch": str(first_step),
                                           **(tags or {})}, artifacts))
    except TrackingError:
        for tracker in optional:
            tracker.close(failed=True)
        raise
    trackers = Trackers(base, optional)
    if params:
        trackers.log_params(params)
    return trackers
