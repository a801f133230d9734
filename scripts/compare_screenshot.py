#!/usr/bin/env python
"""Screenshots of the MLflow UI comparing two runs (their ``val_dice``), taken with headless Chromium.

Starts ``mlflow server`` on a free port of 127.0.0.1 on the store (default: the repository's ``mlruns/mlflow.db``),
picks two runs (default: the two newest runs of the experiment that logged ``val_dice``) and captures two pages,
each as a PNG plus its rendered DOM (``.html``) under ``mlruns/screenshots/`` (git-ignored):

* ``compare-<experiment id>-<UTC time>.png``: the *Compare runs* page (run details, a plot and the metrics table
  with each run's last ``val_dice``), ``#/compare-runs?runs=[...]&experiments=[...]``;
* ``chart-<experiment id>-<UTC time>.png``: the experiment's chart view restricted to the two runs, one
  ``val_dice`` curve per run over the epochs, ``#/experiments/<id>/runs?compareRunsMode=CHART&searchFilter=...``.

Then it stops the server and prints the two PNG paths. A capture is repeated (3 times at most) while its DOM lacks
the run names or the metric, e.g. when a chart was not drawn yet.

    .venv/bin/python scripts/compare_screenshot.py                        # varseg-lits, two newest runs
    .venv/bin/python scripts/compare_screenshot.py --experiment varseg-spect --runs RUN_ID RUN_ID
    .venv/bin/python scripts/compare_screenshot.py --store /tmp/store --out /tmp/shots

Needs a Chromium binary (``apt-get install -y chromium`` on Debian; ``--chromium`` or ``$CHROMIUM`` names another).
Exit code 0 on success; 1 when there are no two runs to compare, the server or the browser fails, or a page still
lacks a run name or the metric (its files are kept); 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORE = REPO / "mlruns"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIRTUAL_TIME_BUDGET_MS = 15000


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium binary to use: ``explicit``, ``$CHROMIUM`` or the first of :data:`CHROMIUM_NAMES` on PATH."""
    for name in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if name:
            found = shutil.which(name)
            if found:
                return found
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mlflow_executable() -> str:
    """The ``mlflow`` command of this interpreter's environment (falls back to the one on PATH)."""
    local = Path(sys.executable).parent / "mlflow"
    return str(local) if local.exists() else (shutil.which("mlflow") or "mlflow")


def compare_runs_url(base_url: str, run_ids: Sequence[str], experiment_ids: Sequence[str]) -> str:
    """The MLflow 3 UI page that compares ``run_ids`` (parameters, metrics and a chart per metric).

    The UI builds it as ``#/compare-runs?runs=<JSON list>&experiments=<JSON list>``; the lists are URL-encoded here.
    """
    runs = urllib.parse.quote(json.dumps(list(run_ids), separators=(",", ":")))
    experiments = urllib.parse.quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")))
    return f"{base_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


def chart_view_url(base_url: str, experiment_id: str, run_ids: Sequence[str] = ()) -> str:
    """The runs tab of an experiment in its chart view: one chart per metric, each run a curve over the steps.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:5000``.
        experiment_id: the experiment.
        run_ids: show only these runs (a ``searchFilter`` on ``attributes.run_id``); default: the experiment's runs.
    """
    url = f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"
    if run_ids:
        search = "attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in run_ids) + ")"
        url += "&searchFilter=" + urllib.parse.quote(search)
    return url


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, port: int | None = None, host: str = "127.0.0.1",
                  log_path: str | Path | None = None, timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``mlflow server`` on ``backend_store_uri`` while the block runs; yields its base URL.

    The server (and the worker processes it starts) runs in its own process group, which is terminated on exit, also
    when the block raises.

    Args:
        backend_store_uri: e.g. ``sqlite:////abs/path/mlflow.db``.
        port: TCP port (default: a free one).
        host: interface to bind (127.0.0.1: reachable from this machine only).
        log_path: file for the server's output (default: discarded).
        timeout_s: how long to wait for the server to answer ``/health``.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout_s``.
    """
    port = port or free_port(host)
    base_url = f"http://{host}:{port}"
    cmd = [mlflow_executable(), "server", "--backend-store-uri", backend_store_uri, "--host", host, "--port",
           str(port), "--workers", "1", "--no-serve-artifacts"]
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mlflow-server-"))  # anything it writes
        log = stack.enter_context(open(log_path, "w")) if log_path else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_until_up(proc, f"{base_url}/health", timeout_s)
            yield base_url
        finally:
            _stop(proc)


def _wait_until_up(proc: subprocess.Popen, health_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} before answering {health_url}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer {health_url} within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Terminate the server's process group (SIGTERM, then SIGKILL after ``grace_s``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):  # workers left behind by a server that exited on its own
        os.killpg(proc.pid, signal.SIGKILL)


def pick_runs(backend_store_uri: str, experiment: str, metric: str = "val_dice",
              run_ids: Sequence[str] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The experiment id and ``(run_id, run_name)`` of the runs to compare.

    Args:
        backend_store_uri: the store to read.
        experiment: experiment name (ignored when ``run_ids`` are given: their own experiment is used).
        metric: without ``run_ids``, take the two newest runs that logged this metric.
        run_ids: the runs to compare.

    Raises:
        LookupError: unknown experiment, or fewer than two runs with ``metric``.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=backend_store_uri)
    if run_ids:
        runs = [client.get_run(run_id) for run_id in run_ids]
        return runs[0].info.experiment_id, [(r.info.run_id, r.info.run_name) for r in runs]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no experiment named {experiment!r} in {backend_store_uri}")
    found = []
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=200):
        if metric in run.data.metrics:
            found.append((run.info.run_id, run.info.run_name))
        if len(found) == 2:
            return exp.experiment_id, found
    raise LookupError(f"experiment {experiment!r} has {len(found)} run(s) with {metric!r}; two are needed")


def capture(chromium: str, url: str, png: Path, dom: Path, expect: Sequence[str] = (),
            window_size: str = "1600,1000", attempts: int = 3, timeout_s: float = 120.0) -> list[str]:
    """Save a screenshot of ``url`` to ``png`` and its rendered DOM to ``dom``; returns the ``expect`` strings missing.

    One headless Chromium call (fresh profile, ``--virtual-time-budget``) writes both, so the DOM shows what the
    screenshot shows. The single-page app now and then has not drawn a chart yet when the budget ends: the capture
    is repeated (up to ``attempts`` times) until the DOM holds every string of ``expect``.

    Raises:
        RuntimeError: Chromium failed or wrote no screenshot.
    """
    png.parent.mkdir(parents=True, exist_ok=True)
    missing = list(expect)
    for _ in range(max(1, attempts)):
        png.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={window_size}",
                   f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", f"--screenshot={png}", "--dump-dom", url]
            proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout_s)
        if proc.returncode != 0 or not png.is_file():
            raise RuntimeError(f"chromium wrote no screenshot ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        dom.write_text(proc.stdout)
        missing = [text for text in expect if text not in proc.stdout]
        if not missing:
            break
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="store folder holding mlflow.db")
    parser.add_argument("--backend-store-uri", default=None, help="store URI (overrides --store)")
    parser.add_argument("--experiment", default="varseg-lits", help="experiment whose newest runs are compared")
    parser.add_argument("--runs", nargs=2, metavar="RUN_ID", default=None, help="the two runs to compare")
    parser.add_argument("--metric", default="val_dice", help="the metric to show (without --runs: runs that logged it)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <store>/screenshots)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    parser.add_argument("--chromium", default=None, help="Chromium binary (default: $CHROMIUM or on PATH)")
    args = parser.parse_args(argv)

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("error: no Chromium binary found (apt-get install -y chromium, or --chromium PATH)", file=sys.stderr)
        return 1
    uri = args.backend_store_uri or f"sqlite:///{(args.store / 'mlflow.db').resolve()}"
    out = (args.out or args.store / "screenshots").resolve()
    try:
        experiment_id, runs = pick_runs(uri, args.experiment, args.metric, args.runs)
    except Exception as exc:  # noqa: BLE001 - LookupError, or MlflowException for an unknown run id
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ids, names = [run_id for run_id, _ in runs], [name for _, name in runs]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    pages = {  # name: (URL path maker, strings the rendered page must hold, window size)
        "compare": (lambda base: compare_runs_url(base, ids, [experiment_id]), [*names, args.metric], "1600,1700"),
        "chart": (lambda base: chart_view_url(base, experiment_id, ids),
                  [f"{name} ({args.metric})" for name in names], "1600,1000"),
    }
    failed = []
    try:
        with mlflow_server(uri, port=args.port, log_path=out / f"server-{stamp}.log") as base_url:
            for page, (make_url, expect, size) in pages.items():
                url = make_url(base_url)
                png, dom = out / f"{page}-{experiment_id}-{stamp}.png", out / f"{page}-{experiment_id}-{stamp}.html"
                missing = capture(chromium, url, png, dom, expect, window_size=size)
                print(f"{page}: {url}" + (f" (page lacks {missing})" if missing else ""), file=sys.stderr)
                failed += missing
                print(png)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if failed:
        print(f"error: the rendered pages lack {failed}; see the PNG and HTML files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
