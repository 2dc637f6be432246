"""`shelfcast ingest serve`."""

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="The HTTP ingestion service: storefront events into Kafka.")


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: SHELFCAST_INGEST_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes, each with its own producer.")] = 1,
) -> None:
    """Serve `POST /v1/events`, `/healthz`, `/readyz`, `/metrics` with uvicorn (uvloop + httptools)."""
    import uvicorn

    from shelfcast.settings import get_settings

    uvicorn.run(
        "shelfcast_ingest.app:app_from_env",
        factory=True,
        host=host,
        port=port or get_settings().ingest_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        workers=workers,
    )
