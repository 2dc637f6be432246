"""The `shelfcast` command. Errors we expect (a server down, bad input) end in one line, not a traceback."""

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from shelfcast import contracts
from shelfcast.errors import ShelfcastError
from shelfcast.infra import Infra
from shelfcast.settings import get_settings

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_enable=False, help="Shelfcast: demand forecasting and inventory decisions."
)
infra_app = typer.Typer(no_args_is_help=True, help="The embedded broker and Redis for one machine.")
contracts_app = typer.Typer(no_args_is_help=True, help="Topic contracts and their JSON Schema.")
app.add_typer(infra_app, name="infra")
app.add_typer(contracts_app, name="contracts")

console = Console()
DEFAULT_SCHEMA_DIR = Path("docs/contracts")
SERVICE_GROUPS = {"simulate": "Simulators that feed the pipeline.", "bench": "Benchmarks that write JSON."}


def _print_status(status: dict) -> None:
    table = Table("server", "ok", "address", "embedded pid", "detail")
    for name, entry in status.items():
        address = entry.get("bootstrap") or entry.get("url")
        detail = entry.get("error") or (", ".join(entry["topics"]) if "topics" in entry else "")
        ok = "[green]yes[/]" if entry["ok"] else "[red]no[/]"
        table.add_row(name, ok, address, str(entry["embedded_pid"] or "-"), detail)
    console.print(table)


@infra_app.command("up")
def infra_up(
    embedded: Annotated[bool, typer.Option(help="Start an embedded broker / Redis where none answers.")] = True,
) -> None:
    """Make Kafka and Redis reachable (starting embedded ones on loopback) and create the topics."""
    _print_status(Infra(get_settings()).up(embedded=embedded))


@infra_app.command("down")
def infra_down() -> None:
    """Stop the servers `infra up` started from this state directory, and only those."""
    stopped = Infra(get_settings()).down()
    console.print(f"stopped: {', '.join(stopped) or 'nothing (no embedded server was running)'}")


@infra_app.command("status")
def infra_status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Report whether Kafka and Redis answer; exits 1 when either does not."""
    status = Infra(get_settings()).status()
    if as_json:
        print(json.dumps(status))
    else:
        _print_status(status)
    if not all(entry["ok"] for entry in status.values()):
        raise typer.Exit(1)


@contracts_app.command("export")
def contracts_export(out: Path = DEFAULT_SCHEMA_DIR) -> None:
    """Write the JSON Schema of every topic's contract."""
    for path in contracts.export_schemas(out):
        console.print(f"wrote {path}")


@contracts_app.command("check")
def contracts_check(directory: Path = DEFAULT_SCHEMA_DIR) -> None:
    """Fail when the exported schemas differ from the models."""
    stale = contracts.stale_schemas(directory)
    if stale:
        raise ShelfcastError(
            f"stale contract schemas in {directory}: {', '.join(stale)} (run: shelfcast contracts export)"
        )
    console.print(f"contract schemas in {directory} are up to date")


@app.command("demo")
def demo(
    # 50 SKUs at 4 s a day is about 1,200 events/s: what this 2-core machine's features job keeps up with while
    # every other service runs beside it (100 SKUs, 2,800 events/s, left it 30-80 s behind; README, "Demo")
    skus: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    days: Annotated[int, typer.Option(min=1, max=365)] = 40,
    seconds_per_day: Annotated[
        float, typer.Option(min=0, max=3_600, help="Wall seconds per simulated day (0: as fast as it goes).")
    ] = 4.0,
) -> None:
    """Run the whole pipeline on embedded servers, report what it did (reports/demo), stop what it started."""
    from shelfcast.demo import run_demo

    run_demo(get_settings(), skus=skus, days=days, seconds_per_day=seconds_per_day, console=console)


def _add_service_commands() -> None:
    """Services register their subcommands as `shelfcast.commands` entry points; the core imports none of them."""
    groups: dict[str, typer.Typer] = {}
    for entry in sorted(entry_points(group="shelfcast.commands"), key=lambda e: e.name):
        group, _, name = entry.name.rpartition(".")
        if not group:
            app.add_typer(entry.load(), name=name)
            continue
        if group not in groups:
            groups[group] = typer.Typer(no_args_is_help=True, help=SERVICE_GROUPS.get(group))
            app.add_typer(groups[group], name=group)
        groups[group].command(name)(entry.load())


def main() -> None:
    _add_service_commands()
    try:
        app()
    except ShelfcastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except ValidationError as exc:  # settings from the environment
        print(f"error: invalid {exc.title}: {contracts.describe_errors(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
