"""MLflow tracking for varseg bundles.

All bundles share one store: a SQLite database ``mlruns/mlflow.db`` at the repository root with run artifacts in
``mlruns/artifacts/``. ``MLFLOW_TRACKING_URI`` in the environment wins, so a team can point every bundle at a shared
``mlflow server``. Open the local store with::

    mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

:class:`MLflowTracker` is an Ignite handler attached to a trainer *and* its evaluator (or to a lone evaluator). It
creates a new run with a unique name (never appends to an older run, RUNNING or not), logs the hyperparameters it
is given plus library versions and the git commit, per-epoch metrics, the merged bundle config and any artifacts,
and marks the run FINISHED, FAILED (exception) or KILLED (Ctrl-C).

The one exception is an explicit resume: :class:`pipeline.training.handlers.TrainingCheckpoint` stores the run id in
every checkpoint and, with ``resume=True``, calls :meth:`MLflowTracker.resume_run` so that the training goes on in
*that* run: it is set RUNNING again, metric points logged after the checkpoint's epoch (by the interrupted process) are
deleted (:func:`truncate_metric_history`), and the resumed epochs are logged at their own steps, so the history ends up
as an uninterrupted run's would.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from pipeline.paths import REPO_ROOT

logger = logging.getLogger(__name__)

ARTIFACTS_DIRNAME = "artifacts"
_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value is 6000 characters (recent releases)
_ISSUED_RUN_NAMES: set[str] = set()  # run names made by this process (make_run_name never repeats one)


def default_store_dir() -> Path:
    """The repository's ``mlruns/`` folder (``VARSEG_MLRUNS`` overrides it)."""
    return Path(os.environ.get("VARSEG_MLRUNS", REPO_ROOT / "mlruns")).resolve()


def tracking_uri(store_dir: str | Path | None = None) -> str:
    """Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<store_dir>/mlflow.db``.

    Raises:
        ValueError: when the environment names a plain folder or ``file:`` URI, which MLflow >= 3.13 refuses.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        if env.startswith("file:") or "://" not in env:
            raise ValueError(
                f"MLFLOW_TRACKING_URI={env!r} names a file store, which MLflow >= 3.13 refuses; use "
                "'sqlite:///<path>/mlflow.db' or the http(s) address of an 'mlflow server'."
            )
        return env
    store = Path(store_dir).resolve() if store_dir is not None else default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_location(store_dir: str | Path | None = None) -> str | None:
    """Artifact root for new experiments: ``<store_dir>/artifacts`` for the local SQLite store, else the server's."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return None
    store = Path(store_dir).resolve() if store_dir is not None else default_store_dir()
    return (store / ARTIFACTS_DIRNAME).as_uri()


def ui_command(store_dir: str | Path | None = None, port: int = 5000) -> str:
    """The one command that opens the MLflow UI on the store (bound to 127.0.0.1)."""
    uri = tracking_uri(store_dir)
    if uri.startswith("sqlite:///"):
        try:
            rel = os.path.relpath(uri[len("sqlite:///") :], os.getcwd())
            uri = f"sqlite:///{rel}" if not rel.startswith("..") else uri
        except ValueError:
            pass
    exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    try:
        rel = os.path.relpath(exe, os.getcwd())
        exe = rel if not rel.startswith("..") else exe
    except ValueError:
        pass
    return f"{exe} ui --backend-store-uri {uri} --host 127.0.0.1 --port {port}"


def make_run_name(bundle: str, *parts: Any) -> str:
    """A unique, readable run name: ``<bundle>-<part>-...-<UTC yyyymmdd-HHMMSS>-<4 hex>``.

    Parts that are None or empty are skipped; floats are written compactly (1/3 -> ``0.333``).
    """
    words = [str(bundle)]
    for p in parts:
        if p is None or p == "":
            continue
        words.append(f"{p:.3g}" if isinstance(p, float) else str(p))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    # 4 random hex digits collide often within one second (birthday bound): never hand out a name twice per process
    for _ in range(1000):
        name = "-".join(words + [stamp, secrets.token_hex(2)])
        if name not in _ISSUED_RUN_NAMES:
            break
    else:
        name = "-".join(words + [stamp, secrets.token_hex(8)])
    _ISSUED_RUN_NAMES.add(name)
    return name


def git_commit(root: str | Path = REPO_ROOT) -> str:
    """The current git commit of ``root`` (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            encoding="utf-8", errors="replace",
            timeout=10,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_params() -> dict[str, str]:
    """Versions of the libraries a result depends on, plus the git commit."""
    import monai  # local import keeps module import light

    try:
        from importlib.metadata import version

        varseg_version = version("varseg")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        varseg_version = "unknown"
    return {
        "version.varseg": varseg_version,
        "version.monai": monai.__version__,
        "version.torch": torch.__version__,
        "version.python": sys.version.split()[0],
        "git_commit": git_commit(),
    }


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts/lists into ``a.b.c`` keys with string values MLflow accepts."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                flat.update(flatten_params(v, prefix=f"{name}.{i}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:_MAX_PARAM_LEN]
    return flat


def find_bundle_config() -> dict | None:
    """The merged (files + command-line overrides) config of the bundle being run, or None.

    ``python -m monai.bundle run`` holds the merged config in its ``ConfigParser``; this looks up the parser of the
    running ``ConfigWorkflow`` on the call stack so that the exact config of a run can be saved with it.
    """
    from monai.bundle import ConfigParser

    frame = sys._getframe(1)
    while frame is not None:
        for value in frame.f_locals.values():
            parser = value if isinstance(value, ConfigParser) else getattr(value, "parser", None)
            if isinstance(parser, ConfigParser):
                return parser.get()
        frame = frame.f_back
    return None


def _sql_store(client: Any) -> Any:
    """The ``SqlAlchemyStore`` behind an ``MlflowClient`` (SQLite, PostgreSQL, ...), or None (e.g. an HTTP server)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # pragma: no cover - mlflow without its SQL extras
        return None
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if isinstance(store, SqlAlchemyStore) else None


def truncate_metric_history(client: Any, run_id: str, after_step: int) -> int | None:
    """Delete every metric point of run ``run_id`` whose step is greater than ``after_step``.

    MLflow's client has no API to delete metric points, so this works on the SQL store directly (through MLflow's
    own ORM models and session, in one transaction) and recomputes the run's latest value of each touched metric the
    way MLflow does (largest step, then timestamp, then value).

    Args:
        client: an ``mlflow.MlflowClient``.
        run_id: the run.
        after_step: points with ``step > after_step`` are deleted.

    Returns:
        The number of deleted points, or None when the store is not an SQL store (an ``mlflow server`` over HTTP):
        nothing can be deleted there.
    """
    store = _sql_store(client)
    if store is None:
        return None
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric

    with store.ManagedSessionMaker(read_only=False) as session:
        stale = session.query(SqlMetric).filter(SqlMetric.run_uuid == run_id, SqlMetric.step > after_step)
        keys = sorted({key for (key,) in stale.with_entities(SqlMetric.key).distinct()})
        removed = stale.delete(synchronize_session=False)
        for key in keys:
            newest = (
                session.query(SqlMetric)
                .filter(SqlMetric.run_uuid == run_id, SqlMetric.key == key)
                .order_by(SqlMetric.step.desc(), SqlMetric.timestamp.desc(), SqlMetric.value.desc())
                .first()
            )
            latest = (
                session.query(SqlLatestMetric)
                .filter(SqlLatestMetric.run_uuid == run_id, SqlLatestMetric.key == key)
                .one_or_none()
            )
            if newest is None:
                if latest is not None:
                    session.delete(latest)
                continue
            if latest is None:
                latest = SqlLatestMetric(run_uuid=run_id, key=key)
                session.add(latest)
            latest.value, latest.timestamp = newest.value, newest.timestamp
            latest.step, latest.is_nan = newest.step, newest.is_nan
    return int(removed)


def _engine_is_trainer(engine: Engine) -> bool:
    from monai.engines import Trainer

    return isinstance(engine, Trainer)


class MLflowTracker:
    """Ignite handler that logs one bundle run to MLflow.

    Attach the same instance to the trainer and to its validation evaluator (both appear in the bundle config's
    handler lists): the trainer's start opens the run, its end closes it; evaluator metrics are logged at the
    trainer's epoch as step. Attached to a lone evaluator (an evaluation bundle), the evaluator opens and closes it.

    :meth:`resume_run` (called by :class:`pipeline.training.handlers.TrainingCheckpoint` on an explicit resume) makes
    the next
    start reopen an existing run instead of creating one.

    Args:
        experiment_name: MLflow experiment (created on first use with artifacts under ``mlruns/artifacts``).
        run_name: unique run name; default from :func:`make_run_name` with ``bundle``.
        bundle: bundle name, logged as tag ``bundle`` and used for the default run name.
        params: hyperparameters to log (nested dicts are flattened to ``a.b`` keys). Pass every hyperparameter
            explicitly: nothing is logged implicitly except versions, git commit and engine lengths.
        tags: extra run tags.
        store_dir: local store folder (default: repository ``mlruns/``); ignored when ``MLFLOW_TRACKING_URI`` is set.
        metric_names: evaluator metric names to log (default: all of ``engine.state.metrics``).
        metric_prefix: prefix added to evaluator metric names (e.g. ``"test_"`` is not added by default; names are
            taken as they are in ``engine.state.metrics``).
        log_config: save the merged bundle config as the artifact ``config/merged_config.json``.
        artifacts: files or folders logged when the run ends (paths that do not exist are skipped with a warning).
        artifact_callback: optional callable ``(tracker) -> None`` run before the run is closed, e.g. to log figures.
            More can be added with :meth:`add_end_callback`.
    """

    def __init__(self, experiment_name: str, run_name: str | None = None, bundle: str = "varseg",
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                 store_dir: str | Path | None = None, metric_names: Sequence[str] | None = None,
                 log_config: bool = True, artifacts: Sequence[str | Path] | str | None = None,
                 artifact_callback: Callable[[MLflowTracker], None] | None = None) -> None:
        self.experiment_name = experiment_name
        self.bundle = bundle
        self.run_name = run_name or make_run_name(bundle)
        self._auto_name = run_name is None
        self.params = dict(params or {})
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.store_dir = store_dir
        self.metric_names = tuple(metric_names) if metric_names is not None else None
        self.log_config = log_config
        self.artifacts = [artifacts] if isinstance(artifacts, (str, Path)) else list(artifacts or [])
        self.artifact_callback = artifact_callback
        self.client: Any = None
        self.run_id: str | None = None
        self.owner: Engine | None = None
        self.trainer: Engine | None = None
        self.resumed_from_epoch: int | None = None
        self._closed = False
        self._end_callbacks: list[Callable[[MLflowTracker], None]] = []
        self._resume: tuple[str, int] | None = None
        self._existing_params: dict[str, str] = {}  # params of a continued run, which MLflow does not let change

    # ----------------------------------------------------------------------------------------------- attaching
    def attach(self, engine: Engine) -> None:
        """Register the handler's events on a trainer or evaluator."""
        if _engine_is_trainer(engine):
            self.trainer = engine
            self.owner = engine
            engine.add_event_handler(Events.STARTED, self._start)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_trainer_epoch)
            engine.add_event_handler(Events.COMPLETED, self._complete)
        else:
            if self.owner is None:
                self.owner = engine
            engine.add_event_handler(Events.STARTED, self._start)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_evaluator_epoch)
            engine.add_event_handler(Events.COMPLETED, self._complete)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception)

    # ----------------------------------------------------------------------------------------------- run life
    def _client(self) -> Any:
        if self.client is None:
            import mlflow

            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri(self.store_dir))
        return self.client

    def add_end_callback(self, callback: Callable[[MLflowTracker], None]) -> None:
        """Run ``callback(tracker)`` when the run ends FINISHED, before the ``artifacts`` are logged."""
        self._end_callbacks.append(callback)

    def resume_run(self, run_id: str, epoch: int) -> None:
        """Make the next start continue run ``run_id`` from the end of ``epoch`` instead of creating a new run.

        At that start the run is set RUNNING again, its metric points with a step after ``epoch`` (logged by the
        interrupted process after its last checkpoint) are deleted, params that are new are logged and params whose
        value changed are recorded as ``resume.param.<name>`` tags (MLflow params cannot change), the merged config
        of the resumed process is logged as ``config/resume_epoch=<epoch>/merged_config.json``, and the tags
        ``resume_count``, ``resumed_from_epoch`` and ``resume_history`` (JSON) say what happened. A run that no
        longer exists (other store, deleted) cannot be continued: a new run is created then, with a warning.

        Args:
            run_id: the MLflow run to continue (as stored in the checkpoint).
            epoch: the trainer epoch the checkpoint was saved at; steps ``> epoch`` are logged again.
        """
        if not run_id:
            raise ValueError("resume_run needs a run id")
        self._resume = (str(run_id), int(epoch))

    def _reopen(self, run_id: str, epoch: int) -> bool:
        """Continue an existing run (see :meth:`resume_run`); False when it cannot be continued."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            logger.warning("cannot continue MLflow run %s (%s); a new run is created instead", run_id,
                           str(exc).splitlines()[0])
            return False
        if run.info.lifecycle_stage != "active":
            logger.warning("MLflow run %s is deleted; a new run is created instead", run_id)
            return False
        previous_status = run.info.status
        if previous_status == "RUNNING":
            logger.warning("MLflow run %s is still marked RUNNING: its process was killed without clean-up (SIGKILL, "
                           "power loss) or is still running elsewhere, in which case both now log to it", run_id)
        client.update_run(run_id, status="RUNNING")
        self.run_id, self.run_name, self._closed = run_id, run.info.run_name, False
        self.resumed_from_epoch = int(epoch)
        self._existing_params = dict(run.data.params)
        removed = truncate_metric_history(client, run_id, after_step=epoch)
        if removed is None:
            logger.warning("the MLflow store at %s cannot delete metric points: steps after epoch %d logged before "
                           "the interruption stay in run %s next to the resumed ones", tracking_uri(self.store_dir),
                           epoch, run_id)
        tags = run.data.tags
        try:
            history = json.loads(tags.get("resume_history", "[]"))
        except json.JSONDecodeError:
            history = []
        entry = {"epoch": int(epoch), "previous_status": previous_status,
                 "removed_points": removed if removed is not None else "unknown",
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if "error" in tags:
            entry["previous_error"] = tags["error"][:300]
            client.delete_tag(run_id, "error")
        history.append(entry)
        while len(json.dumps(history)) > 4500 and len(history) > 1:  # MLflow tag values are limited in length
            history.pop(0)
        self.set_tag("resume_history", json.dumps(history))
        count = int(tags["resume_count"]) + 1 if tags.get("resume_count", "").isdigit() else 1
        self.set_tag("resume_count", count)
        self.set_tag("resumed_from_epoch", int(epoch))
        logger.info("MLflow run '%s' (id %s, was %s) continues after epoch %d; %s later metric point(s) removed",
                    self.run_name, run_id, previous_status, epoch, entry["removed_points"])
        return True

    def start_run(self) -> str:
        """Create the experiment if needed and open a new run; returns the run id (idempotent while it is open).

        Once the run has ended, the next start (e.g. the same trainer run again) opens a new run, never appends,
        unless :meth:`resume_run` asked to continue a given run.
        """
        if self.run_id is not None and not self._closed:
            return self.run_id
        resume, self._resume = self._resume, None
        self._existing_params = {}
        self.resumed_from_epoch = None
        if resume is not None and self._reopen(*resume):
            atexit.register(self._close_at_exit)
            self.log_params({**environment_params(), **flatten_params(self.params)})
            if self.log_config:
                config = find_bundle_config()
                if config is not None:
                    self.log_dict(config, f"config/resume_epoch={resume[1]}/merged_config.json")
            return self.run_id
        if self._closed:
            self.run_id, self._closed = None, False
            if self._auto_name:
                self.run_name = make_run_name(self.bundle)
        client = self._client()
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            exp_id = client.create_experiment(self.experiment_name, artifact_location=artifact_location(self.store_dir))
        else:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            exp_id = exp.experiment_id
        tags = {"bundle": self.bundle, **self.tags}
        if resume is not None:
            tags["resumed_from_run"] = resume[0]  # asked to continue a run that is gone: say so on the new one
        run = client.create_run(exp_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        atexit.register(self._close_at_exit)
        self.log_params({**environment_params(), **flatten_params(self.params)})
        if self.log_config:
            config = find_bundle_config()
            if config is not None:
                self.log_dict(config, "config/merged_config.json")
            else:
                logger.warning("no running bundle config found; the merged config is not logged")
        logger.info("MLflow run '%s' (id %s) in experiment '%s' at %s", self.run_name, self.run_id,
                    self.experiment_name, tracking_uri(self.store_dir))
        return self.run_id

    def _start(self, engine: Engine) -> None:
        if engine is not self.owner:
            return
        self.start_run()
        state = engine.state
        extra = {"max_epochs": state.max_epochs, "epoch_length": state.epoch_length}
        self.log_params({f"engine.{k}": str(v) for k, v in extra.items() if v is not None})

    def _complete(self, engine: Engine) -> None:
        if engine is self.owner:
            self.end_run("FINISHED")

    def _exception(self, engine: Engine, exc: BaseException) -> None:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        if self.run_id is not None and not self._closed:
            self.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
            self.end_run(status)
        raise exc

    def end_run(self, status: str = "FINISHED") -> None:
        """Log the pending artifacts and close the run with ``status`` (FINISHED, FAILED or KILLED)."""
        if self.run_id is None or self._closed:
            return
        try:
            if status == "FINISHED":
                if self.artifact_callback is not None:
                    self.artifact_callback(self)
                for callback in self._end_callbacks:
                    callback(self)
                for path in self.artifacts:
                    self.log_artifact(path)
        finally:
            self._client().set_terminated(self.run_id, status)
            self._closed = True
            logger.info("MLflow run '%s' ended %s", self.run_name, status)

    def _close_at_exit(self) -> None:
        # a run still open when the interpreter exits was interrupted outside the engines (e.g. SIGTERM handling)
        if self.run_id is not None and not self._closed:
            try:
                self.end_run("KILLED")
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass

    # ----------------------------------------------------------------------------------------------- logging
    def _step(self) -> int:
        if self.trainer is not None:
            return int(self.trainer.state.epoch)
        return 0

    @property
    def step(self) -> int:
        """The step metrics are logged at now: the trainer's epoch, or 0 without a trainer."""
        return self._step()

    def _log_trainer_epoch(self, engine: Engine) -> None:
        metrics = {k: v for k, v in engine.state.metrics.items() if _is_number(v)}
        if hasattr(engine, "optimizer") and engine.optimizer is not None:
            for i, group in enumerate(engine.optimizer.param_groups):
                metrics["lr" if i == 0 else f"lr_group_{i}"] = float(group["lr"])
        self.log_metrics(metrics, step=int(engine.state.epoch))

    def _log_evaluator_epoch(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        names = self.metric_names if self.metric_names is not None else list(metrics)
        self.log_metrics({k: metrics[k] for k in names if k in metrics and _is_number(metrics[k])}, step=self._step())

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Log numeric metrics at ``step`` (NaN values are skipped with a warning)."""
        if self.run_id is None or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            value = float(v.item() if isinstance(v, torch.Tensor) else v)
            if math.isnan(value):
                logger.warning("metric %s is NaN at step %d; not logged", k, step)
                continue
            items.append(Metric(k, value, now, step))
        if items:
            self._client().log_batch(self.run_id, metrics=items)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as strings), in batches of 100 as MLflow requires.

        In a continued run (:meth:`resume_run`) a param that already has this value is skipped, and one whose value
        changed (e.g. ``resume`` itself, a longer ``max_epochs``, another git commit) is kept and the new value
        recorded as the tag ``resume.param.<name>``: MLflow does not allow a param to change.
        """
        if self.run_id is None or not params:
            return
        from mlflow.entities import Param

        values = {k: str(v)[:_MAX_PARAM_LEN] for k, v in params.items()}
        existing = self._existing_params
        if existing:
            changed = {k: v for k, v in values.items() if k in existing and existing[k] != v}
            for k, v in changed.items():
                self.set_tag(f"resume.param.{k}", v[:5000])
            if changed:
                logger.info("continued run: changed params recorded as resume.param.* tags: %s", sorted(changed))
            values = {k: v for k, v in values.items() if k not in existing}
            existing.update(values)
        items = [Param(k, v) for k, v in values.items()]
        for i in range(0, len(items), 100):
            self._client().log_batch(self.run_id, params=items[i : i + 100])

    def set_tag(self, key: str, value: Any) -> None:
        if self.run_id is not None:
            self._client().set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file or a folder (recursively) as run artifacts."""
        if self.run_id is None:
            return
        p = Path(path)
        if not p.exists():
            logger.warning("artifact %s does not exist; skipped", p)
            return
        if p.is_dir():
            self._client().log_artifacts(self.run_id, str(p), artifact_path=artifact_path or p.name)
        else:
            self._client().log_artifact(self.run_id, str(p), artifact_path=artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Write ``data`` as JSON to the artifact ``artifact_file`` (e.g. ``config/merged_config.json``)."""
        if self.run_id is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            target.write_text(json.dumps(data, indent=2, default=str))
            parent = str(Path(artifact_file).parent)
            self._client().log_artifact(self.run_id, str(target), artifact_path=None if parent == "." else parent)


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)
