"""Forecasts of regular time series with River, each series' model chosen by its online error.

A series is a list of values at a fixed step (e.g. transactions per hour). :func:`forecast`
runs every candidate model over it *online* (prequential): at each step, before learning the
value, the model forecasts the next ``horizon`` steps; when those steps arrive the errors are
recorded per lead time. The candidate with the lowest mean absolute error over all leads wins;
its forecast from the whole series is the answer, and the interval at lead ``k`` is the
empirical 10 %-90 % range of its own lead-``k`` errors (no distributional assumption).

Candidates: a seasonal naive (the value one season ago; the plain last value without a
season), River's Holt-Winters (additive) and SNARIMAX. Each series is small (a week of hours
is 168 points), so evaluating all of them online costs milliseconds.

Limits: the error is measured on the same history the forecast comes from (there is no
holdout beyond the online protocol); a series shorter than two seasons is forecast without a
season; the interval is empirical, so it is as wide as the model's recent mistakes, and too
narrow when fewer than ~10 errors per lead are known (leads with fewer borrow the pooled ones).

Examples
--------
>>> values = [10 + (i % 24 == 12) * 5 for i in range(96)]  # a daily spike at noon
>>> f = forecast(values, horizon=24, season=24)
>>> f.model, [round(v) for v in f.values[11:14]]
('seasonal naive', [10, 15, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from river import linear_model, optim, time_series

LOWER_Q, UPPER_Q = 0.1, 0.9  # the interval: 80 % of the model's own online errors
MIN_ERRORS_PER_LEAD = 10


class SeasonalNaive(time_series.base.Forecaster):
    """Forecast the value one season ago (``season=0``: the last value).

    Examples
    --------
    >>> m = SeasonalNaive(season=3)
    >>> for y in [1, 2, 3, 4]:
    ...     m.learn_one(y)
    >>> m.forecast(4)
    [2, 3, 4, 2]
    """

    def __init__(self, season: int = 0) -> None:
        self.season = season
        self._history: list[float] = []

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self._history.append(y)
        keep = max(self.season, 1)
        if len(self._history) > keep:
            del self._history[:-keep]

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        if not self._history:
            return [0.0] * horizon
        if self.season <= 1 or len(self._history) < self.season:
            return [self._history[-1]] * horizon
        return [self._history[-self.season + (k % self.season)] for k in range(horizon)]


def candidates(season: int) -> dict[str, Callable[[], time_series.base.Forecaster]]:
    """The models tried on a series with ``season`` steps per cycle (0: none), by name."""
    models: dict[str, Callable[[], time_series.base.Forecaster]] = {
        "seasonal naive" if season > 1 else "naive (last value)":
            lambda: SeasonalNaive(season),
    }
    if season > 1:
        models["Holt-Winters"] = lambda: time_series.HoltWinters(
            alpha=0.2, beta=0.01, gamma=0.5, seasonality=season)
        models["SNARIMAX"] = lambda: time_series.SNARIMAX(
            p=1, d=0, q=0, m=season, sp=1, sq=0, regressor=_regressor())
    else:
        models["Holt (trend)"] = lambda: time_series.HoltWinters(alpha=0.4, beta=0.1)
        models["SNARIMAX"] = lambda: time_series.SNARIMAX(p=2, d=0, q=1, regressor=_regressor())
    return models


def _regressor() -> linear_model.LinearRegression:
    # Series are scaled to a mean level of 1 before the models see them (forecast()), so a
    # larger step than River's default 0.01 learns a week of hours without diverging.
    return linear_model.LinearRegression(optimizer=optim.SGD(0.05), intercept_lr=0.05)


@dataclass
class Forecast:
    """A series' forecast by the model with the lowest online error.

    ``values``, ``lower`` and ``upper`` have one entry per future step; ``errors`` maps every
    candidate to its online mean absolute error (``None`` when it could not be measured);
    ``mae`` is the chosen model's, ``mape`` the same error relative to the series' mean level.
    """

    model: str
    values: list[float]
    lower: list[float]
    upper: list[float]
    mae: float | None
    mape: float | None
    errors: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "values": self.values, "lower": self.lower,
                "upper": self.upper, "mae": self.mae, "mape": self.mape, "errors": self.errors}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _online(make: Callable[[], time_series.base.Forecaster], values: list[float], horizon: int,
            warmup: int) -> tuple[time_series.base.Forecaster, list[list[float]]]:
    """Run a model prequentially; return it (having learned everything) and its signed errors
    (actual - forecast) per lead (index 0: one step ahead)."""
    model = make()
    errors: list[list[float]] = [[] for _ in range(horizon)]
    pending: list[tuple[int, list[float]]] = []  # (issued before step t, forecasts)
    for t, y in enumerate(values):
        if t >= warmup:
            pending.append((t, model.forecast(horizon)))
        for issued, predicted in pending:
            lead = t - issued
            if 0 <= lead < horizon:
                errors[lead].append(y - predicted[lead])
        pending = [(i, p) for i, p in pending if t - i < horizon - 1]
        model.learn_one(y)
    return model, errors


def forecast(values: list[float], *, horizon: int, season: int = 0,
             non_negative: bool = True) -> Forecast:
    """Forecast ``horizon`` steps after ``values`` with the candidate of lowest online error.

    Parameters
    ----------
    values
        The series at a regular step, oldest first, without gaps (a step with no events is 0).
    horizon
        Steps to forecast.
    season
        Steps per cycle (24 for a daily cycle of hourly values), or 0. Ignored when the series
        holds fewer than two cycles.
    non_negative
        Clip forecasts and intervals at 0 (counts, amounts).
    """
    values = [float(v) for v in values]
    if season > 1 and len(values) < 2 * season:
        season = 0
    if not values:
        zeros = [0.0] * horizon
        return Forecast("none (no data)", zeros, zeros, zeros, None, None, {})
    # The first season (or a few steps) only warms the models up: their errors there say
    # nothing about how they forecast.
    warmup = max(season, 3)
    level = sum(abs(v) for v in values) / len(values)
    # The learners see the series scaled to a mean level of 1: the same step sizes then suit
    # a series of 3 alerts an hour and one of 2 million dollars an hour.
    scale = level or 1.0
    scaled = [v / scale for v in values]
    results = {}
    for name, make in candidates(season).items():
        try:
            model, errors = _online(make, scaled, horizon, warmup)
            errors = [[e * scale for e in lead] for lead in errors]
            flat = [abs(e) for lead in errors for e in lead]
            mae = sum(flat) / len(flat) if flat else None
            predicted = [p * scale for p in model.forecast(horizon)]
            if not all(math.isfinite(p) for p in predicted):
                raise ValueError("non-finite forecast")
        except (ValueError, ZeroDivisionError, OverflowError, IndexError):
            results[name] = (None, None, None)
            continue
        results[name] = (mae, errors, predicted)
    scored = [(mae, name) for name, (mae, _, _) in results.items() if mae is not None]
    if scored:
        _, best = min(scored)
    else:  # too short to measure anyone: the simplest model, without an error to show
        best = next(iter(results))
        if results[best][2] is None:
            model = candidates(season)[best]()
            for y in scaled:
                model.learn_one(y)
            results[best] = (None, [[] for _ in range(horizon)],
                             [p * scale for p in model.forecast(horizon)])
    mae, errors, predicted = results[best]
    pooled = [e for lead in errors for e in lead]
    lower, upper = [], []
    for k in range(horizon):
        lead = errors[k] if len(errors[k]) >= MIN_ERRORS_PER_LEAD else pooled
        lo = _quantile(lead, LOWER_Q) if lead else 0.0
        hi = _quantile(lead, UPPER_Q) if lead else 0.0
        lower.append(predicted[k] + min(lo, 0.0))
        upper.append(predicted[k] + max(hi, 0.0))
    if non_negative:
        predicted = [max(0.0, p) for p in predicted]
        lower = [max(0.0, v) for v in lower]
        upper = [max(0.0, v) for v in upper]
    return Forecast(
        model=best, values=[round(v, 4) for v in predicted], lower=[round(v, 4) for v in lower],
        upper=[round(v, 4) for v in upper], mae=None if mae is None else round(mae, 4),
        mape=None if mae is None or not level else round(mae / level, 4),
        errors={name: None if m is None else round(m, 4) for name, (m, _, _) in results.items()})
