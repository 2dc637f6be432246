"""`shelfcast features run`."""

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="The PyFlink job: per-SKU event-time windows into Redis and Kafka.")


@app.command("run")
def run(
    jobmanager: Annotated[
        str | None, typer.Option(help="host:port of a Flink JobManager's REST API; default: a local mini-cluster.")
    ] = None,
) -> None:
    """Run the features job until stopped; resumes from the newest checkpoint in the state directory."""
    from shelfcast.settings import get_settings
    from shelfcast_features.job import run as run_job
    from shelfcast_features.settings import FeatureJobSettings

    run_job(get_settings(), FeatureJobSettings(), jobmanager)
