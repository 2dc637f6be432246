"""`shelfcast features run`."""

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="The PyFlink job: per-SKU event-time windows into Redis and Kafka.")


@app.command("run")
def run(
    jobmanager: Annotated[
        str | None, typer.Option(help="host:port of a Flink JobManager's REST API; default: a local mini-cluster.")
    ] = None,
    fresh: Annotated[
        bool, typer.Option(help="Forget earlier checkpoints (e.g. after the embedded broker, memory only, restarted).")
    ] = False,
) -> None:
    """Run the features job until stopped; resumes from the newest checkpoint in the state directory."""
    import shutil

    from shelfcast.settings import get_settings
    from shelfcast_features.job import run as run_job
    from shelfcast_features.settings import FeatureJobSettings

    settings = get_settings()
    if fresh:
        shutil.rmtree(settings.state_dir / "flink" / "checkpoints", ignore_errors=True)
    run_job(settings, FeatureJobSettings(), jobmanager)
