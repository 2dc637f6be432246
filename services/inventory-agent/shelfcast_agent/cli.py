"""`shelfcast agent`: train the DQN, evaluate it against the classical policies and the optimum, run the loop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shelfcast_agent.cli_run import run_command
from shelfcast_agent.instances import DEFAULT_SUITE, Instance, InstancesError
from shelfcast_agent.replay import replay_command

if TYPE_CHECKING:
    import pandas as pd

    from shelfcast_agent.dqn import TrainConfig, TrainResult

app = typer.Typer(no_args_is_help=True, help="Inventory agent: DQN training, evaluation against baselines, the loop.")


def _usage_error(message: str) -> typer.Exit:
    """Print ``error: <message>`` as one line on stderr; the exit to raise (code 2, a usage error)."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(2)


def _instances(path: Path) -> list[Instance]:
    """The instances of a file, or a one-line usage error naming the file and the entry."""
    from shelfcast_agent.instances import load_instances

    try:
        return load_instances(path)
    except InstancesError as exc:
        raise _usage_error(f"--instances: {exc}") from None


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="Model directory to write (weights + card.json).")],
    instances: Annotated[Path, typer.Option(help="Instances file to train and validate on.")] = DEFAULT_SUITE,
    steps: Annotated[int, typer.Option(min=2, help="Simulated periods (one update each).")] = 8_000,
    seed: Annotated[int, typer.Option()] = 0,
    random_instances: Annotated[int, typer.Option(min=0, help="Random instances drawn around the given ones.")] = 48,
    validate_every: Annotated[int, typer.Option(min=1, help="Periods between validations.")] = 1_000,
) -> None:
    """Train the residual double DQN on the instances (plus random ones around them); keep the best validation."""
    from shelfcast_agent.dqn import TrainConfig

    console = Console()
    config = TrainConfig(
        steps=steps,
        random_instances=random_instances,
        validate_every=min(validate_every, steps),
        learning_starts=min(TrainConfig.learning_starts, steps - 1),
    )
    result = train_with_progress(_instances(instances), config, seed, console)
    result.policy.save(out)
    card = result.policy.card
    console.print(
        f"wrote {out}: version {card['version']}, {result.seconds:.0f} s, margin {card['margin']}, "
        f"validation mean {card['validation']['validation_mean_gap_pct']:+.3f}% vs the anchors"
    )


def train_with_progress(instances: list[Instance], config: TrainConfig, seed: int, console: Console) -> TrainResult:
    """`dqn.train` with a progress bar and a line per validation (also what `shelfcast bench agent` trains with)."""
    from shelfcast_agent.dqn import train

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("fitting the classical anchors", total=config.steps)

        def report(step: int, record: dict[str, Any]) -> None:
            if "setup_seconds" in record:
                progress.update(task, description="training")
                console.print(f"anchors fitted in {record['setup_seconds']} s")
            progress.update(task, completed=step)
            if "validation_mean_gap_pct" in record:
                console.print(
                    f"step {step}: validation vs anchor mean {record['validation_mean_gap_pct']:+.3f}%, worst "
                    f"{record['validation_worst_gap_pct']:+.3f}% (margin {record['margin']}), loss {record['loss']:.4f}"
                )

        return train(instances, config, seed=seed, progress=report)


@app.command("evaluate")
def evaluate_command(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results.")],
    instances: Annotated[Path, typer.Option(help="Instances file (JSON list or {instances: [...]}).")] = DEFAULT_SUITE,
    model: Annotated[Path, typer.Option(help="DQN model directory.")] = Path("__default__"),
    seeds: Annotated[int, typer.Option(min=2, help="Evaluation seeds (0..K-1).")] = 10,
    periods: Annotated[int | None, typer.Option(min=1, help="Periods per run (default: each horizon).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Periods run before counting.")] = 100,
    optimal: Annotated[bool, typer.Option(help="Solve the DP where computable.")] = True,
    report_dir: Annotated[Path | None, typer.Option("--report", help="Also write an HTML report here.")] = None,
) -> None:
    """Per instance: mean cost per period with a 95% CI over seeds for dqn, each classical policy and the optimum."""
    from shelfcast_agent.dqn import DEFAULT_MODEL, DQNPolicy
    from shelfcast_agent.evaluate import Departures, default_policies, evaluate, summary, to_json

    console = _wide(Console())
    chosen = _instances(instances)
    model_dir = DEFAULT_MODEL if str(model) == "__default__" else model
    try:
        policy = DQNPolicy.load(model_dir)
    except (ValueError, OSError) as exc:
        raise _usage_error(f"--model: {exc}") from None
    started = time.perf_counter()
    departures = Departures()
    with console.status("evaluating") as status:
        results = evaluate(
            chosen,
            default_policies(policy, departures),
            seeds=seeds,
            periods=periods,
            warmup=warmup,
            optimal=optimal,
            progress=lambda name: status.update(f"evaluating {name} on {len(chosen)} instances x {seeds} seeds"),
        )
    table = summary(results)
    seconds = time.perf_counter() - started
    card = policy.card
    model_info = {k: card.get(k) for k in ("version", "train_seconds", "margin", "action_deltas", "validation")}
    payload = to_json(
        results,
        table,
        instances_file=str(instances),
        model={"path": str(model_dir), **model_info},
        dqn_departures_pct=departures.pct,
        seconds=round(seconds, 1),
    )
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    _print(table, payload["summary"], console)
    console.print(f"dqn orders other than its anchor in {departures.pct or 0:.3f}% of its decisions")
    if report_dir is not None:
        from shelfcast_agent.evaluate import classical_factory, dqn_factory, trajectory
        from shelfcast_agent.report import pick_trajectory_instance, write_report

        name = pick_trajectory_instance(table, [i.name for i in chosen])
        instance = next(i for i in chosen if i.name == name)
        path = trajectory(
            instance, {"dqn": dqn_factory(policy), "capped_base_stock": classical_factory("capped_base_stock")}
        )
        page = write_report(results, table, report_dir, trajectory=path, trajectory_instance=name, card=card)
        console.print(f"report: {page}")
    console.print(f"wrote {json_out} ({seconds:.0f} s)")


def _wide(console: Console) -> Console:
    """The console, or a wide one when writing to a file or pipe (the table has many columns)."""
    return console if console.is_terminal else Console(width=max(console.width, 190))


def _print(table: pd.DataFrame, head: dict[str, Any], console: Console) -> None:
    from shelfcast_agent.dqn import CLASSICAL
    from shelfcast_agent.evaluate import DQN, OPTIMAL

    policies = [p for p in (DQN, *CLASSICAL, OPTIMAL) if p in table.columns]
    headers = {
        "gap_dqn_pct": "dqn vs optimal %",
        "dqn_vs_optimal_policy_pct": "dqn vs optimal policy (same seeds) %",
        "dqn_vs_best_classical_pct": "dqn vs best classical %",
    }
    gaps = [c for c in headers if c in table.columns]
    out = Table("instance", *policies, *(headers[c] for c in gaps), title="mean cost per period")
    for instance, row in table.iterrows():
        cells = [_cell(row[p], "{:.3f}") for p in policies] + [_cell(row[c], "{:+.2f}") for c in gaps]
        out.add_row(str(instance), *cells)
    console.print(out)
    mean_gap = head.get("mean_gap_dqn_vs_optimal_pct")
    worst = head.get("worst_dqn_vs_best_classical_pct")
    if mean_gap is not None:
        console.print(f"dqn mean gap to the optimum ({head['optimum_computable']} instances): {mean_gap:+.2f}%")
    paired = head.get("mean_gap_dqn_vs_simulated_optimal_policy_pct")
    if paired is not None:
        console.print(f"dqn mean gap to the optimal policy simulated on the same seeds: {paired:+.2f}%")
    if worst is not None:
        console.print(f"dqn worst gap to the best classical: {worst:+.2f}% ({head['worst_instance']})")


def _cell(value: Any, fmt: str) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return fmt.format(number) if number == number else "-"


app.command("run")(run_command)  # helper C's online loop
app.command("replay")(replay_command)  # the agent's orders vs capped base-stock on the realised demand
