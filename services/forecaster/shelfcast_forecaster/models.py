"""A global Keras 3 (TensorFlow backend) multi-horizon quantile forecaster, trained across all series.

`KerasQuantileForecaster` has the backtest's ``Forecaster`` signature ``(train, h, freq, season_length)``: each
call fits one small network on windows cut from every series of ``train`` and forecasts ``h`` steps after each
series' last ``ds``.

Inputs of one window (``lookback`` steps ending at the forecast origin):
- demand divided by the series' scale: the mean of its demand over the whole of ``train`` plus `EPSILON`. The
  series mean rather than the lookback mean because most carparts series are intermittent: a lookback window
  is often all zeros (its mean would be 0, a degenerate scale) and its mean jumps as single demands enter and
  leave it, while the series mean is one stable level per series, known at forecast time. The cost is that a
  training window's scale saw demand after its origin (a mild level leak, the same for training and
  validation windows; at forecast time the scale uses the past only);
- a 0/1 "non-zero demand" channel (intermittency) and a 0/1 "observed" mask channel;
- sin/cos of the step's period within the season: its `calendar_position` (periods since a fixed epoch on the
  ``freq`` calendar) modulo ``season_length``, so that training and serving agree on the phase of any date.
Per window also ``log1p(scale)`` (the series' volume) and sin/cos of the first target step's period.
- one channel per ``exogenous`` column (e.g. the feature windows' ``views``, ``clicks``, ``avg_price``), divided
  by the series' mean of that column plus `EPSILON`; a missing value takes the series' previous one (0 before the
  first). Other columns of ``train`` are ignored.
Series shorter than ``lookback`` are left-padded with zeros and mask 0 (windows with a padded start are also
used in training, so the network has seen them); there is no mean fallback.

Outputs: ``h x len(quantiles)`` in the scaled space, non-crossing and non-negative by construction: the quantile
nearest 0.5 is ``softplus(a)``, those above add ``softplus`` increments, those below subtract them and are
clipped at 0. Training minimises the pinball loss averaged over quantiles and steps.

Training windows: every origin of every series whose ``h`` targets lie in ``train`` and that has at least
`MIN_OBSERVED` observed points; the origins whose targets reach into the last ``validation_steps`` periods are
held out for early stopping (best weights restored). Scoring runs the network through a ``tf.function``
(``jit_compile=True``, falling back to plain graph mode where XLA fails) over all series in fixed-size batches.

``fit`` + ``predict`` split the call for training and serving; ``export`` writes a TensorFlow SavedModel whose
``serve`` endpoint takes ``[sequence, static]`` as built by `encode_windows` (the serving side needs no Keras
objects).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from shelfcast_forecaster.registry import ModelSpec

log = logging.getLogger(__name__)

ARCHITECTURES = ("lstm", "tcn")
EPSILON = 1e-3
MIN_OBSERVED = 2
N_CHANNELS = 5  # scaled demand, non-zero, observed, sin, cos
N_STATIC = 3  # log1p(scale), sin/cos of the first target step
CALENDAR_EPOCH = pd.Timestamp("1970-01-05")  # a Monday: phase 0 of a weekly season on daily data


@dataclass
class _Panel:
    """``train`` as a dense matrix on its shared calendar."""

    ids: np.ndarray  # (S,)
    values: np.ndarray  # (S, T), 0 where unobserved
    observed: np.ndarray  # (S, T) 0/1
    last: np.ndarray  # (S,) position of each series' last observation
    scale: np.ndarray  # (S,)
    grid: pd.DatetimeIndex  # (T + h,) the calendar, forecast steps included
    offset: int  # calendar_position of grid[0]
    exog: np.ndarray  # (S, T, E) exogenous columns, gaps filled forward
    exog_scale: np.ndarray  # (S, E)


class KerasQuantileForecaster:
    """Global LSTM / temporal-conv quantile model; call it like a backtest ``Forecaster``.

    ``lookback`` defaults to ``2 * season_length`` capped at ``n - h`` (``n`` the number of periods in
    ``train``), so that at least one full training window exists. ``validation_steps`` defaults to
    ``max(1, min(h // 2, n // 8))`` periods. The fitted network of the latest call is kept as ``model``.
    ``mixed_precision`` (default: when TensorFlow sees a GPU) trains the hidden layers in float16 with loss
    scaling; the output head and the exported model's outputs stay float32.
    """

    def __init__(
        self,
        arch: str = "lstm",
        lookback: int | None = None,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        epochs: int = 40,
        seed: int = 0,
        units: int = 32,
        learning_rate: float = 3e-3,
        batch_size: int = 256,
        patience: int = 5,
        validation_steps: int | None = None,
        score_batch_size: int = 4096,
        point_loss: float = 0.0,
        metric_weights: bool = False,
        mixed_precision: bool | None = None,
        exogenous: Sequence[str] = (),
        verbose: int = 0,
    ) -> None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {arch!r}; known: {list(ARCHITECTURES)}")
        quantiles = tuple(float(q) for q in quantiles)
        if not quantiles or any(not 0 < q < 1 for q in quantiles) or list(quantiles) != sorted(set(quantiles)):
            raise ValueError(f"quantiles must be distinct, increasing and in (0, 1); got {quantiles}")
        self.arch = arch
        self.lookback = lookback
        self.quantiles = quantiles
        self.epochs = epochs
        self.seed = seed
        self.units = units
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.patience = patience
        self.validation_steps = validation_steps
        self.score_batch_size = score_batch_size
        self.point_loss = point_loss
        self.metric_weights = metric_weights
        self.mixed_precision = mixed_precision
        self.exogenous = tuple(exogenous)
        self.verbose = verbose
        self.model: keras.Model | None = None
        self.spec: ModelSpec | None = None
        self.history: dict[str, list[float]] = {}

    @property
    def columns(self) -> list[str]:
        return [f"p{100 * q:g}" for q in self.quantiles]

    def __repr__(self) -> str:
        return f"KerasQuantileForecaster(arch={self.arch!r}, lookback={self.lookback}, seed={self.seed})"

    def __call__(self, train: pd.DataFrame, h: int, freq: str, season_length: int) -> pd.DataFrame:
        """``unique_id, ds`` and one column per quantile (``p10, p50, p90`` by default), ``h`` rows per series."""
        return self.fit(train, h, freq, season_length).predict(train)

    def fit(self, train: pd.DataFrame, h: int, freq: str, season_length: int) -> KerasQuantileForecaster:
        """Train a fresh network on every window of ``train``; sets ``model``, ``spec`` and ``history``."""
        if h < 1 or season_length < 1:
            raise ValueError(f"h and season_length must be >= 1; got h={h}, season_length={season_length}")
        panel = _panel(train, h, freq, self.exogenous)
        n = panel.values.shape[1]
        lookback = self.lookback or max(1, min(2 * season_length, n - h))
        val_steps = self.validation_steps or max(1, min(h // 2, n // 8))
        keras.utils.set_random_seed(self.seed)
        self.spec = ModelSpec(
            arch=self.arch,
            lookback=lookback,
            horizon=h,
            freq=freq,
            season_length=season_length,
            quantiles=self.quantiles,
            exogenous=self.exogenous,
        )
        dtype = "mixed_float16" if self._mixed() else "float32"
        n_channels = N_CHANNELS + len(self.exogenous)
        self.model = model = _build(self.arch, lookback, n_channels, h, self.quantiles, self.units, dtype)
        windows = _training_windows(panel, lookback, h, season_length, self.metric_weights)
        self.history = self._fit(model, windows, n - val_steps, h)
        return self

    def _mixed(self) -> bool:
        if self.mixed_precision is None:
            return bool(tf.config.list_physical_devices("GPU"))
        return self.mixed_precision

    def predict(self, history: pd.DataFrame) -> pd.DataFrame:
        """Forecast ``spec.horizon`` steps after each series' last ``ds`` in ``history`` (long format)."""
        if self.model is None or self.spec is None:
            raise RuntimeError("fit the forecaster first")
        spec = self.spec
        panel = _panel(history, spec.horizon, spec.freq, spec.exogenous)
        x_seq, x_static = _inputs(panel, panel.last, spec.lookback, spec.season_length)
        scaled = _score(self.model, x_seq, x_static, self.score_batch_size)  # (S, h, Q)
        return _frame(panel, scaled * panel.scale[:, None, None], spec.horizon, spec.columns)

    def export(self, directory: str | Path) -> Path:
        """Write the fitted network as a TensorFlow SavedModel (endpoint ``serve``) into ``directory``."""
        if self.model is None:
            raise RuntimeError("fit the forecaster first")
        self.model.export(str(directory), format="tf_saved_model", verbose=False)
        return Path(directory)

    def _fit(self, model: keras.Model, windows, val_start: int, h: int) -> dict[str, list[float]]:
        x_seq, x_static, target, target_end = windows
        is_val = target_end >= val_start
        if is_val.all() or not is_val.any():  # too little data for a split: fit on everything, no early stopping
            fit_idx, val_idx = np.arange(len(target)), None
        else:
            fit_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        fit_idx = np.random.default_rng(self.seed).permutation(fit_idx)
        loss = PinballLoss(self.quantiles, self.point_loss)
        optimizer = keras.optimizers.Adam(self.learning_rate, clipnorm=1.0)
        if self._mixed():  # float16 gradients underflow without loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss=loss, jit_compile=False)
        callbacks, validation = [], None
        if val_idx is not None:
            validation = ((x_seq[val_idx], x_static[val_idx]), target[val_idx])
            callbacks.append(
                keras.callbacks.EarlyStopping(patience=self.patience, restore_best_weights=True, min_delta=1e-5)
            )
        history = model.fit(
            (x_seq[fit_idx], x_static[fit_idx]),
            target[fit_idx],
            batch_size=self.batch_size,
            epochs=self.epochs,
            validation_data=validation,
            callbacks=callbacks,
            shuffle=True,
            verbose=self.verbose,
        )
        return {k: [float(v) for v in vs] for k, vs in history.history.items()}


class PinballLoss(keras.losses.Loss):
    """Weighted mean pinball loss over steps and quantiles, plus ``point_loss`` x weighted squared error of the
    median quantile.

    ``y_pred`` is (B, h, Q); ``y_true`` is (B, h + 2): the h scaled targets, then the pinball weight and the
    squared-error weight of the window (packed so that both travel through ``fit`` with the targets).
    """

    def __init__(self, quantiles: Sequence[float], point_loss: float = 0.0, name: str = "pinball") -> None:
        super().__init__(name=name)
        self.quantiles = tuple(quantiles)
        self.point_loss = float(point_loss)
        self.anchor = int(np.argmin([abs(q - 0.5) for q in self.quantiles]))

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, y_pred.dtype)
        target, w_pinball, w_point = y_true[:, :-2], y_true[:, -2], y_true[:, -1]
        q = ops.convert_to_tensor(self.quantiles, dtype=y_pred.dtype)
        diff = ops.expand_dims(target, -1) - y_pred
        loss = w_pinball * ops.mean(ops.maximum(q * diff, (q - 1.0) * diff), axis=(-2, -1))
        if self.point_loss:
            loss = loss + self.point_loss * w_point * ops.mean(ops.square(diff[..., self.anchor]), axis=-1)
        return loss


class NonCrossingQuantiles(keras.layers.Layer):
    """(B, h, Q) raw outputs -> non-negative, non-crossing quantiles (see the module doc)."""

    def __init__(self, quantiles: Sequence[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.quantiles = tuple(quantiles)
        self.anchor = int(np.argmin([abs(q - 0.5) for q in self.quantiles]))

    def call(self, raw):
        ops, k = keras.ops, self.anchor
        middle = ops.softplus(raw[..., k : k + 1])
        parts = [middle]
        if k > 0:  # below the anchor: subtract cumulative increments, nearest first, then clip at 0
            gaps = ops.flip(ops.softplus(raw[..., :k]), axis=-1)
            parts.insert(0, ops.flip(ops.relu(middle - ops.cumsum(gaps, axis=-1)), axis=-1))
        if k < len(self.quantiles) - 1:
            parts.append(middle + ops.cumsum(ops.softplus(raw[..., k + 1 :]), axis=-1))
        return ops.concatenate(parts, axis=-1)

    def get_config(self):
        return {**super().get_config(), "quantiles": list(self.quantiles)}


class LastStep(keras.layers.Layer):
    """(B, T, C) -> (B, C): the last time step (a named layer rather than a Lambda, so the model serialises)."""

    def call(self, x):
        return x[:, -1, :]


def _build(
    arch: str, lookback: int, n_channels: int, h: int, quantiles, units: int, dtype: str = "float32"
) -> keras.Model:
    """``dtype`` is the hidden layers' policy ("mixed_float16" on a GPU); the output head stays float32."""
    n_quantiles = len(quantiles)
    seq = keras.Input((lookback, n_channels), name="sequence")
    static = keras.Input((N_STATIC,), name="static")
    if arch == "lstm":
        x = keras.layers.LSTM(units, return_sequences=True, dtype=dtype)(seq)
        x = keras.layers.LSTM(units, dtype=dtype)(x)
    else:  # temporal conv: causal dilated Conv1D stack with residuals, the last step summarises the window
        x = keras.layers.Conv1D(units, 1, dtype=dtype)(seq)
        dilation = 1
        while dilation < lookback:
            conv = keras.layers.Conv1D(
                units, 2, padding="causal", dilation_rate=dilation, activation="relu", dtype=dtype
            )
            x = keras.layers.Add(dtype=dtype)([x, conv(x)])
            dilation *= 2
        x = LastStep(dtype=dtype)(x)
    x = keras.layers.Concatenate(dtype=dtype)([x, static])
    x = keras.layers.Dense(2 * units, activation="relu", dtype=dtype)(x)
    raw = keras.layers.Reshape((h, n_quantiles))(keras.layers.Dense(h * n_quantiles, dtype="float32")(x))
    out = NonCrossingQuantiles(quantiles, dtype="float32")(raw)
    return keras.Model([seq, static], out, name=f"quantile_{arch}")


def _panel(train: pd.DataFrame, h: int, freq: str, exogenous: Sequence[str] = ()) -> _Panel:
    missing = [c for c in ("unique_id", "ds", "y", *exogenous) if c not in train.columns]
    if missing:
        raise ValueError(f"train is missing column(s) {missing}")
    if train.empty:
        raise ValueError("train has no rows")
    ds = pd.to_datetime(train["ds"])
    dates = pd.date_range(ds.min(), ds.max(), freq=freq)
    position = dates.get_indexer(ds)
    if (position < 0).any():
        bad = ds[position < 0].iloc[0]
        raise ValueError(f"ds {bad} is not on the {freq!r} calendar starting {ds.min()}")
    ids, row = np.unique(train["unique_id"].to_numpy(), return_inverse=True)
    values = np.zeros((len(ids), len(dates)), dtype=np.float32)
    observed = np.zeros_like(values)
    y = train["y"].to_numpy(dtype=np.float64)
    keep = np.isfinite(y)
    values[row[keep], position[keep]] = y[keep]
    observed[row[keep], position[keep]] = 1.0
    if (observed.sum(axis=1) == 0).any():
        raise ValueError("every series needs at least one finite y")
    last = len(dates) - 1 - np.argmax(observed[:, ::-1], axis=1)
    scale = series_scale(values, observed)
    grid = pd.date_range(dates[0], periods=len(dates) + h, freq=freq)
    exog = np.full((len(ids), len(dates), len(exogenous)), np.nan, dtype=np.float32)
    for e, column in enumerate(exogenous):
        exog[row, position, e] = pd.to_numeric(train[column], errors="coerce").to_numpy(dtype=np.float32)
    exog = fill_forward(exog)
    offset = calendar_position(dates[0], freq)
    return _Panel(ids, values, observed, last, scale.astype(np.float32), grid, offset, exog, exog_scales(exog))


def fill_forward(exog: np.ndarray) -> np.ndarray:
    """(S, T, E): each NaN takes the previous value along T; 0 before the first value."""
    frame = exog.transpose(0, 2, 1).reshape(-1, exog.shape[1])  # (S * E, T)
    filled = pd.DataFrame(frame).ffill(axis=1).fillna(0.0).to_numpy(dtype=np.float32)
    return filled.reshape(exog.shape[0], exog.shape[2], exog.shape[1]).transpose(0, 2, 1)


def exog_scales(exog: np.ndarray) -> np.ndarray:
    """(S, T, E) -> (S, E): each series' mean of each exogenous column plus `EPSILON`."""
    return (np.abs(exog).mean(axis=1) + EPSILON).astype(np.float32)


@functools.lru_cache(maxsize=1024)
def calendar_position(date: pd.Timestamp, freq: str) -> int:
    """Periods from `CALENDAR_EPOCH` (rolled onto the ``freq`` calendar) to ``date``, which must be on it."""
    epoch = pd.tseries.frequencies.to_offset(freq).rollforward(CALENDAR_EPOCH)
    date = pd.Timestamp(date)
    if date < epoch:
        raise ValueError(f"dates before {epoch} are not supported")
    steps = pd.date_range(epoch, date, freq=freq)
    if steps[-1] != date:
        raise ValueError(f"{date} is not on the {freq!r} calendar")
    return len(steps) - 1


def _phase(position, season_length: int) -> tuple[np.ndarray, np.ndarray]:
    angle = 2 * np.pi * (np.asarray(position) % season_length) / season_length
    return np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)


def encode_windows(
    values, observed, scale, origin_position, season_length: int, exog=None, exog_scale=None
) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs ``(sequence, static)`` for windows of raw demand ending at a forecast origin.

    ``values`` and ``observed`` are (W, L): the ``lookback`` periods up to and including the origin, 0 where not
    observed; ``scale`` (W,) is each series' scale; ``origin_position`` (W,) or a scalar is the `calendar_position`
    of the origin; ``exog`` (W, L, E) and ``exog_scale`` (W, E), when the model has exogenous columns.
    """
    values, observed = np.asarray(values, np.float32), np.asarray(observed, np.float32)
    scale = np.asarray(scale, np.float32)
    lookback = values.shape[1]
    origin = np.broadcast_to(np.asarray(origin_position), (len(values),))
    scaled = values / scale[:, None] * observed
    sin, cos = _phase(origin[:, None] + np.arange(-lookback + 1, 1)[None, :], season_length)
    seq = np.stack([scaled, (scaled > 0).astype(np.float32), observed, sin, cos], axis=-1)
    if exog is not None and np.shape(exog)[-1]:
        scaled_exog = np.asarray(exog, np.float32) / np.asarray(exog_scale, np.float32)[:, None, :]
        seq = np.concatenate([seq, scaled_exog * observed[:, :, None]], axis=-1)
    next_sin, next_cos = _phase(origin + 1, season_length)
    static = np.stack([np.log1p(scale), next_sin, next_cos], axis=-1)
    return seq.astype(np.float32), static.astype(np.float32)


def series_scale(values, observed) -> np.ndarray:
    """Each row's scale: the mean of its observed demand plus `EPSILON` (rows need one observation)."""
    values, observed = np.asarray(values, np.float32), np.asarray(observed, np.float32)
    return (values * observed).sum(axis=1) / observed.sum(axis=1) + EPSILON


def _inputs(panel: _Panel, origin: np.ndarray, lookback: int, season_length: int, rows=None):
    """Network inputs for windows ending at ``origin`` (one per entry, of series ``rows``, default all)."""
    rows = np.arange(len(panel.ids)) if rows is None else rows
    steps = origin[:, None] + np.arange(-lookback + 1, 1)[None, :]  # (W, L), may be < 0
    clipped = np.clip(steps, 0, None)
    observed = panel.observed[rows[:, None], clipped] * (steps >= 0)
    values = panel.values[rows[:, None], clipped]
    exog = panel.exog[rows[:, None], clipped]
    origins = origin + panel.offset
    return encode_windows(values, observed, panel.scale[rows], origins, season_length, exog, panel.exog_scale[rows])


def _naive_scales(panel: _Panel, season_length: int) -> tuple[np.ndarray, np.ndarray]:
    """In-sample MAE and MSE of the seasonal naive per series (lag 1 where a season is not available)."""
    mae, mse = np.full(len(panel.ids), np.nan), np.full(len(panel.ids), np.nan)
    for lag in (1, season_length):  # the seasonal lag overwrites wherever it is defined
        if lag >= panel.values.shape[1]:
            continue
        both = panel.observed[:, lag:] * panel.observed[:, :-lag]
        diff = (panel.values[:, lag:] - panel.values[:, :-lag]) * both
        count = both.sum(axis=1)
        ok = count > 0
        mae[ok] = np.abs(diff).sum(axis=1)[ok] / count[ok]
        mse[ok] = (diff**2).sum(axis=1)[ok] / count[ok]
    return mae, mse


def _window_weights(panel: _Panel, season_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per series: scale / naive MAE and scale² / naive MSE, so that the weighted losses in the scaled space are
    the backtest's scaled pinball and squared RMSSE terms; capped at their 99th percentile, mean 1."""
    mae, mse = _naive_scales(panel, season_length)
    weights = []
    for w in (panel.scale / mae, panel.scale**2 / mse):
        w = np.where(np.isfinite(w) & (w > 0), w, np.nan)
        fill = np.nanmedian(w) if np.isfinite(w).any() else 1.0
        w = np.nan_to_num(w, nan=fill)
        w = np.minimum(w, np.percentile(w, 99))
        weights.append((w / w.mean()).astype(np.float32))
    return weights[0], weights[1]


def _training_windows(panel: _Panel, lookback: int, h: int, season_length: int, metric_weights: bool = True):
    """Inputs, packed targets (see `PinballLoss`) and the last target position of every usable window."""
    n = panel.values.shape[1]
    origins = np.arange(n - h)  # targets origin+1 .. origin+h must lie in the panel
    rows, origin = (a.ravel() for a in np.meshgrid(np.arange(len(panel.ids)), origins, indexing="ij"))
    targets = origin[:, None] + np.arange(1, h + 1)[None, :]
    counts = np.cumsum(panel.observed, axis=1)
    observed_before = counts[rows, origin]
    targets_observed = panel.observed[rows[:, None], targets].all(axis=1)
    usable = (observed_before >= MIN_OBSERVED) & targets_observed
    rows, origin, targets = rows[usable], origin[usable], targets[usable]
    if not len(rows):
        raise ValueError(f"no series has {MIN_OBSERVED} observations followed by h={h} more: too little data")
    seq, static = _inputs(panel, origin, lookback, season_length, rows)
    target = panel.values[rows[:, None], targets] / panel.scale[rows, None]
    if metric_weights:
        w_pinball, w_point = (w[rows] for w in _window_weights(panel, season_length))
    else:
        w_pinball = w_point = np.ones(len(rows), dtype=np.float32)
    packed = np.concatenate([target, w_pinball[:, None], w_point[:, None]], axis=1)
    return seq, static, packed.astype(np.float32), targets[:, -1]


def _score(model: keras.Model, seq: np.ndarray, static: np.ndarray, batch_size: int) -> np.ndarray:
    """Forecasts of all windows through one compiled function, in fixed-size batches (the last one padded)."""
    batch_size = max(1, min(batch_size, len(seq)))
    return CompiledScoring(lambda s, c: model([s, c], training=False))(seq, static, batch_size)


class CompiledScoring:
    """``call(sequence, static)`` behind one ``tf.function``, XLA-compiled when ``jit`` and XLA can compile it
    (it falls back to plain graph mode for good after the first failure). Keep one instance per model: each new
    batch shape costs a trace and a compilation, so callers use a few fixed batch sizes."""

    def __init__(self, call, jit: bool = True) -> None:
        self._call = call
        self.jit = jit
        self._fn = tf.function(call, jit_compile=jit)

    def __call__(self, seq: np.ndarray, static: np.ndarray, batch_size: int) -> np.ndarray:
        try:
            return _batched(self._fn, seq, static, batch_size)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError) as exc:
            if not self.jit:
                raise
            log.warning("XLA scoring failed (%s); scoring without jit_compile", type(exc).__name__)
            self.jit, self._fn = False, tf.function(self._call)
            return _batched(self._fn, seq, static, batch_size)


def _batched(fn, seq: np.ndarray, static: np.ndarray, batch_size: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(seq), batch_size):
        s, c = seq[start : start + batch_size], static[start : start + batch_size]
        size = len(s)
        if size < batch_size:  # same shape every call: one trace, one compilation
            s = np.concatenate([s, np.zeros((batch_size - size, *s.shape[1:]), s.dtype)])
            c = np.concatenate([c, np.zeros((batch_size - size, *c.shape[1:]), c.dtype)])
        outputs.append(fn(tf.constant(s), tf.constant(c)).numpy()[:size])
    return np.concatenate(outputs)


def _frame(panel: _Panel, forecasts: np.ndarray, h: int, columns: list[str]) -> pd.DataFrame:
    steps = panel.last[:, None] + np.arange(1, h + 1)[None, :]
    frame = pd.DataFrame({"unique_id": np.repeat(panel.ids, h), "ds": panel.grid[steps.ravel()]})
    values = np.clip(forecasts.reshape(-1, forecasts.shape[-1]).astype(np.float64), 0, None)
    for i, column in enumerate(columns):
        frame[column] = values[:, i]
    return frame
