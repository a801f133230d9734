"""``mlflow server`` on a SQLite store serves the runs and their ``val_dice`` history over its REST API.

The server is the one ``scripts/compare_screenshot.py`` starts (127.0.0.1, a free port, one worker); it is stopped
when the test ends, also when an assertion fails. About 10 s.
"""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import mlflow
import pytest
from mlflow.entities import Metric

REPO = Path(__file__).resolve().parents[1]
HISTORIES = {"run-a": [0.30, 0.52, 0.61], "run-b": [0.25, 0.40, 0.47]}


def load_script() -> ModuleType:
    """``scripts/compare_screenshot.py`` as a module."""
    spec = importlib.util.spec_from_file_location("compare_screenshot", REPO / "scripts" / "compare_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_store(root: Path, histories: dict[str, list[float]] = HISTORIES) -> tuple[str, str, dict[str, str]]:
    """A SQLite store with one experiment and a run per entry of ``histories`` (``val_dice`` at steps 1, 2, ...).

    Returns:
        The store URI, the experiment id and ``{run name: run id}``.
    """
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("varseg-compare", artifact_location=(root / "artifacts").as_uri())
    ids = {}
    for name, values in histories.items():
        run = client.create_run(exp_id, run_name=name)
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[Metric("val_dice", v, now + i, i + 1) for i, v in enumerate(values)])
        client.set_terminated(run.info.run_id, "FINISHED")
        ids[name] = run.info.run_id
        time.sleep(0.01)  # distinct start times: "newest" is well defined
    return uri, exp_id, ids


def _api(base_url: str, path: str, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any]:
    url = f"{base_url}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_server_serves_runs_and_val_dice_history(tmp_path: Path) -> None:
    script = load_script()
    uri, exp_id, ids = make_store(tmp_path / "store")
    with script.mlflow_server(uri, log_path=tmp_path / "server.log", timeout_s=60) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        runs = _api(base_url, "runs/search", {"experiment_ids": [exp_id]})["runs"]
        by_name = {run["info"]["run_name"]: run for run in runs}
        assert set(by_name) == set(HISTORIES)
        for name, values in HISTORIES.items():
            run = by_name[name]
            assert run["info"]["run_id"] == ids[name] and run["info"]["status"] == "FINISHED"
            latest = {m["key"]: m for m in run["data"]["metrics"]}
            assert latest["val_dice"]["value"] == pytest.approx(values[-1]) and latest["val_dice"]["step"] == 3
            history = _api(base_url, "metrics/get-history", run_id=ids[name], metric_key="val_dice")["metrics"]
            assert [m["step"] for m in sorted(history, key=lambda m: m["step"])] == [1, 2, 3]
            assert [m["value"] for m in sorted(history, key=lambda m: m["step"])] == pytest.approx(values)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):  # the server is gone
        urllib.request.urlopen(f"{base_url}/health", timeout=2)


def test_ui_urls_have_the_mlflow_3_route_forms() -> None:
    script = load_script()
    compare = script.compare_runs_url("http://127.0.0.1:5000/", ["r1", "r2"], ["7"])
    assert compare == "http://127.0.0.1:5000/#/compare-runs?runs=%5B%22r1%22%2C%22r2%22%5D&experiments=%5B%227%22%5D"
    query = urllib.parse.parse_qs(compare.split("?", 1)[1])
    assert json.loads(query["runs"][0]) == ["r1", "r2"] and json.loads(query["experiments"][0]) == ["7"]
    assert script.chart_view_url("http://127.0.0.1:5000", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?compareRunsMode=CHART")
    chart = script.chart_view_url("http://127.0.0.1:5000", "7", ["r1", "r2"])
    assert urllib.parse.parse_qs(chart.split("?", 1)[1])["searchFilter"] == ["attributes.run_id IN ('r1', 'r2')"]


def test_varseg_runs_prints_chart_and_compare_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VARSEG_MLRUNS", str(tmp_path / "mlruns"))
    _, exp_id, ids = make_store(tmp_path / "mlruns")
    assert main(["runs", "--experiment", "varseg-compare"]) == 0
    out = capsys.readouterr().out
    script = load_script()
    assert f"charts: {script.chart_view_url('http://127.0.0.1:5000', exp_id)}" in out
    newest_first = [ids["run-b"], ids["run-a"]]
    assert f"compare: {script.compare_runs_url('http://127.0.0.1:5000', newest_first, [exp_id])}" in out
