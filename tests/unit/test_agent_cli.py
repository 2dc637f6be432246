"""`shelfcast agent evaluate` end to end on a small file, and a bad instances file as a usage error."""

import json
from pathlib import Path

from typer.testing import CliRunner

from shelfcast_agent import dqn
from shelfcast_agent.cli import app

INSTANCES = [
    {"name": "bo", "demand": {"dist": "poisson", "mean": 4}, "lead_time": 1, "holding_cost": 1,
     "shortage_cost": 9, "lost_sales": False},
    {"name": "ls", "demand": {"dist": "poisson", "mean": 3}, "lead_time": 2, "holding_cost": 1,
     "shortage_cost": 4, "lost_sales": True},
]  # fmt: skip


def test_evaluate_writes_costs_intervals_and_gaps_per_instance(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps(INSTANCES))
    model = dqn.untrained_policy(hidden=(8,)).save(tmp_path / "model")
    out = tmp_path / "eval.json"
    args = ["evaluate", "--instances", str(path), "--json", str(out), "--model", str(model)]
    args += ["--seeds", "2", "--periods", "150", "--warmup", "20", "--report", str(tmp_path / "report")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"protocol", "policies", "instances", "summary", "model", "seconds"} <= set(report)
    assert report["policies"][:6] == ["dqn", "newsvendor", "base_stock", "capped_base_stock", "s_S", "r_Q"]
    assert {"optimal", "optimal_policy"} <= set(report["policies"])
    assert [entry["instance"] for entry in report["instances"]] == ["bo", "ls"]
    for entry in report["instances"]:
        dqn_cost = entry["costs"]["dqn"]
        assert dqn_cost["ci_low"] <= dqn_cost["mean"] <= dqn_cost["ci_high"] and dqn_cost["seeds"] == 2
        assert entry["optimal"] > 0 and entry["best_classical"] in report["policies"]
        assert {"gap_dqn_pct", "dqn_vs_best_classical_pct"} <= set(entry["gaps_pct"])
    assert {"mean_gap_dqn_vs_optimal_pct", "worst_dqn_vs_best_classical_pct"} <= set(report["summary"])
    assert report["model"]["version"].startswith("untrained-")
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("<img") == 3
    assert "dqn" in result.output and "bo" in result.output


def test_a_bad_instances_file_is_a_usage_error_naming_the_file_and_entry(tmp_path: Path) -> None:
    broken = [INSTANCES[0], {**INSTANCES[1], "holding_cost": -1}]
    path = tmp_path / "broken-suite.json"
    path.write_text(json.dumps(broken))
    result = CliRunner().invoke(app, ["evaluate", "--instances", str(path), "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: --instances:") and "broken-suite.json: instance 1 (ls)" in line
    assert not (tmp_path / "x.json").exists()
    missing = CliRunner().invoke(app, ["train", "--instances", str(tmp_path / "nope.json"), "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "nope.json" in missing.output


def test_the_online_loop_is_mounted_as_run() -> None:
    names = {command.name for command in app.registered_commands}
    assert {"train", "evaluate", "run"} <= names
