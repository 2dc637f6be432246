"""Train a global quantile network, choose the architecture on a validation window, publish it to a registry.

`train_and_publish` holds out the last ``h`` periods of the data, fits each candidate architecture on the rest
and scores it there beside SeasonalNaive (`evaluate`: scaled pinball, RMSSE, ...). The candidate with the lowest
validation scaled pinball loss (the training objective) is refit on all the data and published with its card.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from shelfcast.contracts import FeatureWindow
from shelfcast_forecaster.baselines import forecast_baselines
from shelfcast_forecaster.metrics import evaluate
from shelfcast_forecaster.models import KerasQuantileForecaster
from shelfcast_forecaster.registry import ModelCard, ModelRegistry, fingerprint, new_version

INPUTS = (
    "sequence (lookback, 5): demand / scale, demand > 0, observed, sin and cos of the calendar phase; "
    "then each exogenous field / its series mean; static (3): log1p(scale), sin and cos of the first forecast "
    "step's phase; scale = mean observed demand + 1e-3"
)


def validation_scores(
    df: pd.DataFrame,
    h: int,
    freq: str,
    season_length: int,
    candidates: dict[str, KerasQuantileForecaster],
    progress: Callable[[str], None] = lambda _: None,
) -> pd.DataFrame:
    """Fit every candidate on all but the last ``h`` periods; metrics on those periods, SeasonalNaive beside."""
    dates = np.sort(df["ds"].unique())
    if len(dates) <= 2 * h:
        raise ValueError(f"{len(dates)} periods are too few to validate a horizon of {h} (need more than {2 * h})")
    cutoff = pd.Timestamp(dates[-h - 1])
    train = df[df["ds"] <= cutoff]
    frames = []
    for name, forecaster in candidates.items():
        progress(f"validating {name}")
        frames.append(forecaster(train, h, freq, season_length).assign(model=name))
    progress("validating SeasonalNaive")
    frames.append(forecast_baselines(train, h, freq, season_length, models=["SeasonalNaive"]))
    forecasts = pd.concat(frames, ignore_index=True).assign(cutoff=cutoff)
    scored = forecasts.merge(df[["unique_id", "ds", "y"]], on=["unique_id", "ds"], how="inner")
    return evaluate(scored, train, season_length).set_index("model")


def train_and_publish(
    df: pd.DataFrame,
    registry: ModelRegistry,
    h: int,
    freq: str,
    season_length: int,
    source: str,
    archs: Sequence[str] = ("lstm", "tcn"),
    epochs: int = 40,
    seed: int = 0,
    exogenous: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> ModelCard:
    """Validate ``archs``, refit the best on all of ``df``, publish it as the registry's current version.

    ``exogenous`` columns become input channels; they must be `FeatureWindow` fields, which is where the server
    reads them from."""
    unservable = [name for name in exogenous if name not in FeatureWindow.model_fields]
    if unservable:
        known = ", ".join(FeatureWindow.model_fields)
        raise ValueError(f"exogenous {unservable} are not feature-window fields ({known})")

    def forecaster(arch: str) -> KerasQuantileForecaster:
        return KerasQuantileForecaster(arch, epochs=epochs, seed=seed, exogenous=exogenous)

    candidates = {arch: forecaster(arch) for arch in archs}
    scores = validation_scores(df, h, freq, season_length, candidates, progress)
    best = str(scores.loc[list(archs), "scaled_pinball"].idxmin())
    progress(f"refitting {best} on all data")
    final = forecaster(best).fit(df, h, freq, season_length)
    assert final.spec is not None
    data = fingerprint(df, source)
    card = ModelCard(
        version=new_version(data),
        created_at=datetime.now(UTC),
        spec=final.spec,
        data=data,
        validation={name: {k: float(v) for k, v in row.items()} for name, row in scores.iterrows()},
        chosen_by=f"lowest scaled pinball loss on the last {h} periods among {list(archs)}",
        inputs=INPUTS,
        framework={"tensorflow": tf.__version__, "keras": keras.__version__},
    )
    progress(f"publishing {card.version}")
    registry.publish(final.export, card)
    return card
