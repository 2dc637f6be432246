"""A model registry on the file system: versioned model directories and a ``current`` pointer.

Layout of a registry root::

    versions/<version>/saved_model/   the TensorFlow SavedModel (endpoint ``serve``)
    versions/<version>/card.json      the `ModelCard`: spec, data fingerprint, validation metrics
    current -> versions/<version>     a symlink, swapped atomically by `ModelRegistry.promote`

A version is published complete or not at all: it is written under a temporary name and renamed into
``versions/``. Servers poll `ModelRegistry.current_version` and reload when it changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

CARD = "card.json"
SAVED_MODEL = "saved_model"


class ModelSpec(BaseModel):
    """What a fitted network takes and returns: enough to build its inputs from raw demand (see
    `shelfcast_forecaster.models.encode_windows`); ``columns`` are ``p10``, ``p50``, ... per quantile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str
    lookback: int = Field(ge=1)
    horizon: int = Field(ge=1)
    freq: str
    season_length: int = Field(ge=1)
    quantiles: tuple[float, ...]
    exogenous: tuple[str, ...] = Field(default=(), description="feature-window fields used as input channels")

    @property
    def columns(self) -> list[str]:
        return [f"p{100 * q:g}" for q in self.quantiles]


class DataFingerprint(BaseModel):
    """Which data a model was trained on: a content hash of the sorted ``unique_id, ds, y`` rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    source: str
    series: int
    rows: int
    start: datetime
    end: datetime


class ModelCard(BaseModel):
    """Everything a server or a person needs to know about one model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    created_at: datetime
    spec: ModelSpec
    data: DataFingerprint
    validation: dict[str, dict[str, float]] = Field(
        description="metrics per candidate on the validation window (the last horizon of the data)"
    )
    chosen_by: str
    inputs: str
    framework: dict[str, str]


def fingerprint(df: pd.DataFrame, source: str) -> DataFingerprint:
    rows = df[["unique_id", "ds", "y"]].sort_values(["unique_id", "ds"], kind="stable")
    digest = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()).hexdigest()
    return DataFingerprint(
        sha256=digest,
        source=source,
        series=int(rows["unique_id"].nunique()),
        rows=len(rows),
        start=pd.Timestamp(rows["ds"].min()).to_pydatetime(),
        end=pd.Timestamp(rows["ds"].max()).to_pydatetime(),
    )


def new_version(data: DataFingerprint, now: datetime | None = None) -> str:
    """Sortable by time and telling of the data: ``20261124T180000Z-<8 hex of the data hash>``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{data.sha256[:8]}"


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "current"

    def publish(self, export, card: ModelCard, promote: bool = True) -> Path:
        """Write a version: ``export(directory)`` writes the SavedModel there; then the card; then promote."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        final = self.versions_dir / card.version
        if final.exists():
            raise FileExistsError(f"model version {card.version} already exists in {self.versions_dir}")
        staging = self.versions_dir / f".staging-{uuid.uuid4().hex}"
        try:
            export(staging / SAVED_MODEL)
            (staging / CARD).write_text(card.model_dump_json(indent=2))
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if promote:
            self.promote(card.version)
        return final

    def promote(self, version: str) -> None:
        """Point ``current`` at ``version`` atomically (a new symlink renamed over the old one)."""
        if not (self.versions_dir / version / CARD).is_file():
            raise FileNotFoundError(f"no model version {version} in {self.versions_dir}")
        link = self.root / f".current-{uuid.uuid4().hex}"
        link.symlink_to(Path("versions") / version)
        os.replace(link, self.pointer)

    def current_version(self) -> str | None:
        try:
            return Path(os.readlink(self.pointer)).name
        except FileNotFoundError:
            return None

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / CARD).is_file())

    def path(self, version: str) -> Path:
        return self.versions_dir / version

    def card(self, version: str) -> ModelCard:
        return ModelCard.model_validate_json((self.path(version) / CARD).read_text())
