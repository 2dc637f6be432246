"""`shelfcast agent run`: the online decision loop (with the HTTP API unless --no-http).

`run_command` is mounted by the agent's CLI; `python -m shelfcast_agent.cli_run` runs it on its own.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(pretty_exceptions_enable=False, help="The inventory agent's online decision loop.")


def run_command(
    host: Annotated[str, typer.Option(help="Interface the HTTP API listens on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="HTTP port (default: SHELFCAST_AGENT_PORT).")] = None,
    http: Annotated[bool, typer.Option(help="Serve /v1/inventory, /healthz, /readyz and /metrics.")] = True,
    sku_params: Annotated[
        Path | None, typer.Option(help="SKU parameter file (default: SHELFCAST_AGENT_SKU_PARAMS).", exists=True)
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="A trained DQN (default: SHELFCAST_AGENT_MODEL_DIR; none: base-stock).")
    ] = None,
    dqn: Annotated[bool, typer.Option("--dqn", help="Decide with the DQN shipped in the package.")] = False,
    budget: Annotated[
        float | None, typer.Option(min=0.01, help="Spend per period (default: SHELFCAST_AGENT_BUDGET_PER_PERIOD).")
    ] = None,
) -> None:
    """Consume forecasts, purchases and receipts; keep inventory in Redis; publish reorders and price changes."""
    from shelfcast.settings import get_settings
    from shelfcast_agent.settings import AgentSettings

    if dqn:
        from shelfcast_agent.dqn import DEFAULT_MODEL

        model_dir = model_dir or DEFAULT_MODEL
    overrides: dict[str, Any] = {"sku_params": sku_params, "model_dir": model_dir, "budget_per_period": budget}
    config = AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
    if http:
        import uvicorn

        from shelfcast_agent.app import create_app

        uvicorn.run(
            create_app(config=config),
            host=host,
            port=port or config.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
        )
        return
    from shelfcast_agent.online import run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_forever(get_settings(), config, stop)


app.command("run")(run_command)

if __name__ == "__main__":
    app()
