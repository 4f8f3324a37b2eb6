"""Online anomaly scoring of system metrics, one detector state per series (host x metric).

How a sample is scored (all in event time, no look-ahead, one pass, O(1) per sample):

1. **Forecasts.** A robust level (an exponentially weighted mean updated with *clipped*
   residuals, so an outlier moves it by at most a few noise units) and, once a day of data has
   been seen, a seasonal profile (per time-of-day bin, the same clipped update across days).
   Each keeps the EW mean absolute error (MAE) of its forecasts. The seasonal forecast is used
   only where its long-run error is clearly (20 %) below the level's (daily patterns and square
   waves are then predicted rather than flagged).
2. **Raw surprise.** Each forecast's residual in MAE units, capped at ``RAW_CAP`` and scaled to
   [0, 1].
3. **Anomaly likelihood** (Numenta's, as in HTM's NAB detector): the mean of the last
   ``short_window`` raw surprises is compared with the distribution (EW mean and variance over
   ~``long_window`` samples) of that same mean in the series' history; the Gaussian tail
   probability ``p`` of the current mean gives ``score = log(p + 1e-10) / log(1e-10)`` (0.5
   at p = 1e-5, 0.9 at p = 1e-9). A series is judged against its *own* normal variability of
   surprise: noisy series need a longer or larger excursion than quiet ones. With the seasonal
   profile in use, the likelihood of its surprise is the score.
4. **Out of range.** A value beyond everything the series has shown (its min/max, widened by
   ``range_tolerance`` of the range and by one MAE) scores 1.
5. **One alarm per anomaly.** After a score reaches ``anomaly_threshold``, the series' scores
   are held at 0 for ``suppress_samples`` samples (the follow-ups of one incident are not new
   alarms); the baselines keep learning meanwhile. A level shift that persists is absorbed:
   after ``rebase_after`` samples off to one side, the level is reset to the new one.

Reasons: ``spike`` (the point residual dominates), ``out_of_range`` (the short mean dominates
and the value lies half the series' historical span beyond its historical range),
``level_shift`` / ``drift`` (the short mean dominates; abrupt vs gradual),
``stuck`` (a varying series repeats one value ``stuck_after`` times), ``silent`` (from
:meth:`MetricScorer.silent_series`).

Limits: scores are 0 for the first ``warmup`` samples of a new series (no alarm storm on
first sight); seasonality needs one day of data and a sampling interval of 2 hours or less.
"""

from __future__ import annotations

import math
from array import array

from agents.features import BoundedDict

DAY_MS = 86_400_000
# Residuals are capped at 10 MAE in the raw surprise: beyond that, "very surprising" is all the
# likelihood needs to know, and one wild value does not dominate the history's variance.
RAW_CAP = 10.0
# The likelihood's distribution of mean surprise: its standard deviation is floored (as in
# Numenta's estimator) so that a perfectly predictable stretch does not make any blip rare.
MIN_STD = 0.03
# The seasonal forecast must beat the level's error by 20 % to take over (hysteresis).
SWITCH_GAIN = 0.8
# Memory of the forecasts' long-run errors that choose between them (~500 samples).
SELECT_ALPHA = 0.002
# log(p + 1e-10) / log(1e-10): the likelihood's log scale (Numenta's).
_TINY = 1e-10
_LOG_TINY = math.log(_TINY)
_SQRT2 = math.sqrt(2.0)
STATE_VERSION = 2


class _Series:
    """The detector state of one series; plain floats so that it serialises to JSON."""

    __slots__ = (
        "n", "t_first", "t_last", "dt_ew", "level", "mae", "season", "s_mae", "s_n", "seasonal",
        "s_sel", "l_sel", "bin_ms", "zs", "side_run", "last_value", "repeats", "longest_run",
        "vmin", "vmax", "silent_reported", "jump", "hold",
        "l_buf", "l_sum", "l_mean", "l_var", "s_buf", "s_sum", "s_mean", "s_var", "s_seen",
    )
    _ARRAYS = ("season", "l_buf", "s_buf")

    def __init__(self, short_window: int = 10) -> None:
        self.n = 0
        self.t_first = 0
        self.t_last = 0
        self.dt_ew = 0.0
        self.level = 0.0
        self.mae = 0.0
        self.season: array | None = None
        self.s_mae = 0.0
        self.s_n = 0
        self.seasonal = False
        self.s_sel = 0.0
        self.l_sel = 0.0
        self.bin_ms = 0
        self.zs = 0.0
        self.side_run = 0
        self.last_value = 0.0
        self.repeats = 0
        self.longest_run = 0
        self.vmin = 0.0
        self.vmax = 0.0
        self.silent_reported = False
        self.jump = 0.0
        self.hold = 0
        # the likelihood of each forecast's surprise: the last short_window raw surprises
        # (a ring, indexed by the sample count) and the EW mean / variance of their mean
        self.l_buf: array | None = array("d", [0.0]) * short_window
        self.l_sum = 0.0
        self.l_mean = 0.0
        self.l_var = 0.0
        self.s_buf: array | None = array("d", [0.0]) * short_window
        self.s_sum = 0.0
        self.s_mean = 0.0
        self.s_var = 0.0
        self.s_seen = 0

    def to_state(self) -> dict:
        state = {k: getattr(self, k) for k in self.__slots__ if k not in self._ARRAYS}
        for k in self._ARRAYS:
            a = getattr(self, k)
            state[k] = None if a is None else [None if v != v else v for v in a]
        return state

    @classmethod
    def from_state(cls, state: dict) -> _Series:
        s = cls()
        for k in cls.__slots__:
            if k not in cls._ARRAYS:
                setattr(s, k, state[k])
        for k in cls._ARRAYS:
            a = state[k]
            setattr(s, k, None if a is None else array(
                "d", [math.nan if v is None else v for v in a]))
        return s


def _log_likelihood(z: float) -> float:
    """Score in [0, 1] of a standardised mean surprise ``z``: the log of its Gaussian tail
    (0 when the surprise is no higher than usual)."""
    if z <= 0.0:
        return 0.0
    p = 0.5 * math.erfc(z / _SQRT2)
    score = math.log(p + _TINY) / _LOG_TINY
    return 0.0 if score < 0.0 else (1.0 if score > 1.0 else score)


class MetricScorer:
    """Score each sample of each series against that series' own behaviour.

    Parameters
    ----------
    anomaly_threshold
        Scores at or above it are alarms; after one, the series is held quiet for
        ``suppress_samples`` samples.
    warmup
        Samples of a new series scored 0 while its baseline forms (no alarm storm).
    level_alpha
        Weight of a new sample in the robust level: 0.05 is a ~20-sample memory, short enough
        to follow slow trends, long enough to average noise out.
    season_alpha
        Weight of a new day in a time-of-day bin: 0.5 halves the influence of any one day, so a
        one-day incident leaves only a clipped trace on the next day's forecast.
    error_alpha
        Memory of the forecast errors (0.02: ~50 samples) that scale the residuals.
    shift_alpha
        The short mean of residuals that reveals level shifts (for ``rebase_after`` and the
        reasons): 0.25, a ~7-sample span.
    short_window, long_window
        The anomaly likelihood: the mean of the last ``short_window`` raw surprises against
        the distribution of that mean over ~``long_window`` samples (Numenta: 10 and a few
        thousand).
    range_tolerance
        A value beyond the series' historical range by more than this fraction of the range
        (plus one MAE) scores 1.
    suppress_samples
        Samples held at score 0 after an alarm (one incident, one alarm).
    clip
        Residuals are clipped at ``clip`` error units when they update the baselines: 3 is the
        usual Huber/winsorising choice (clean Gaussian noise is barely touched).
    rebase_after
        Consecutive samples with the short mean beyond ``clip`` on one side after which the
        level is reset: a shift confirmed that long is the new normal.
    stuck_after
        Identical consecutive values that make a normally varying series ``stuck``.
    silence_factor
        A series is silent when it has not reported for this many usual intervals.
    max_series, evict_after_ms
        Memory bounds: at most ``max_series`` states (least recently updated evicted first),
        and :meth:`silent_series` drops series silent for longer than ``evict_after_ms``.
    """

    model_version = "metric-likelihood-v2"

    def __init__(self, *, anomaly_threshold: float = 0.9, warmup: int = 300,
                 level_alpha: float = 0.05, season_alpha: float = 0.5,
                 error_alpha: float = 0.02, shift_alpha: float = 0.25,
                 short_window: int = 10, long_window: int = 2000,
                 range_tolerance: float = 0.02, suppress_samples: int = 200,
                 clip: float = 3.0, rebase_after: int = 12, stuck_after: int = 30,
                 silence_factor: float = 5.0, max_series: int = 50_000,
                 evict_after_ms: int = 7 * DAY_MS) -> None:
        self.anomaly_threshold = anomaly_threshold
        self.warmup = warmup
        self.level_alpha = level_alpha
        self.season_alpha = season_alpha
        self.error_alpha = error_alpha
        self.shift_alpha = shift_alpha
        self.short_window = short_window
        self.long_window = long_window
        self.range_tolerance = range_tolerance
        self.suppress_samples = suppress_samples
        self.clip = clip
        self.rebase_after = rebase_after
        self.stuck_after = stuck_after
        self.silence_factor = silence_factor
        self.max_series = max_series
        self.evict_after_ms = evict_after_ms
        self._series: BoundedDict[str, _Series] = BoundedDict(max_series)
        # The short mean of i.i.d. residuals has a smaller spread than one residual: this
        # factor puts both on one scale (sd of an EW mean = sqrt(a / (2 - a))), for reasons.
        self._shift_gain = math.sqrt((2.0 - shift_alpha) / shift_alpha)
        self._long_alpha = 1.0 / long_window

    # ------------------------------------------------------------------ the hot path
    def score_record(self, event: dict, scored_at_ms: int) -> dict:
        """Score one sample; learn from it; return the event with the score fields."""
        key = f"{event['host']}/{event['metric']}"
        series = self._series
        s = series.get(key)
        if s is None:
            s = _Series(self.short_window)
        score, expected, lower, upper, reason = self._step(s, int(event["event_time"]),
                                                           float(event["value"]))
        series[key] = s
        return {**event, "score": score, "expected": expected, "lower": lower,
                "upper": upper, "reason": reason, "scored_at": scored_at_ms}

    def _step(self, s: _Series, t: int, x: float):
        n = s.n
        if n == 0:
            s.t_first = s.t_last = t
            s.level = s.last_value = s.vmin = s.vmax = x
            s.n = 1
            return 0.0, x, x, x, None
        # ---- sampling interval (for silence and the seasonal bins)
        dt = t - s.t_last
        if dt > 0:
            s.dt_ew = dt if s.dt_ew == 0.0 else s.dt_ew + 0.1 * (dt - s.dt_ew)
        s.t_last = max(t, s.t_last)
        s.silent_reported = False
        clip = self.clip
        k = self.short_window
        la = self._long_alpha
        # ---- the level forecast and the likelihood of its surprise
        level = s.level
        scale_floor = 1e-9 + 1e-6 * abs(level)
        mae = s.mae if s.mae > scale_floor else scale_floor
        expected, scale = level, mae
        e_level = x - level
        z = e_level / mae
        u = abs(z)
        raw = (u if u < RAW_CAP else RAW_CAP) / RAW_CAP
        slot = n % k
        buf = s.l_buf
        s.l_sum += raw - buf[slot]
        buf[slot] = raw
        short = s.l_sum / k
        std = math.sqrt(s.l_var)
        zl = (short - s.l_mean) / (std if std > MIN_STD else MIN_STD)
        d = short - s.l_mean
        if n == 1:
            s.l_mean = short
        else:
            s.l_mean += la * d
            s.l_var = (1.0 - la) * (s.l_var + la * d * d)
        # ---- the seasonal forecast and its likelihood
        season = s.season
        e_season = None
        if season is None and n >= 16 and s.dt_ew > 0.0:
            # fix the bin width once: the sampling interval, at least 5 min (<= 288 bins a day)
            bin_ms = max(300_000, int(s.dt_ew))
            if DAY_MS // bin_ms >= 12:
                s.bin_ms = bin_ms
                season = s.season = array("d", [math.nan]) * (DAY_MS // bin_ms)
        if season is not None:
            b = (t // s.bin_ms) % len(season)
            sv = season[b]
            if sv == sv:  # filled
                e_season = x - sv
                smae = s.s_mae if s.s_mae > scale_floor else scale_floor
                us_ = abs(e_season) / smae
                rs = (us_ if us_ < RAW_CAP else RAW_CAP) / RAW_CAP
                sbuf = s.s_buf
                slot = s.s_seen % k
                s.s_sum += rs - sbuf[slot]
                sbuf[slot] = rs
                sshort = s.s_sum / k
                sstd = math.sqrt(s.s_var)
                zsea = (sshort - s.s_mean) / (sstd if sstd > MIN_STD else MIN_STD)
                d = sshort - s.s_mean
                if s.s_seen == 0:
                    s.s_mean = sshort
                else:
                    s.s_mean += la * d
                    s.s_var = (1.0 - la) * (s.s_var + la * d * d)
                s.s_seen += 1
                # hysteresis: the seasonal forecast takes over when clearly better (20 % less
                # error), and hands back only when worse, so noisy series do not flap
                if s.s_n * self.error_alpha >= 1.0:
                    s.seasonal = s.s_sel < (s.l_sel if s.seasonal else SWITCH_GAIN * s.l_sel)
                if s.seasonal:
                    expected, scale = sv, smae
                    z = e_season / smae
                    u = abs(z)
                    zl = zsea
        # ---- score: the likelihood, out of range, warm-up, suppression
        thr = self.anomaly_threshold
        score = _log_likelihood(zl)
        span = s.vmax - s.vmin
        tol = self.range_tolerance * span + mae
        lower, upper = s.vmin - tol, s.vmax + tol
        if x > upper or x < lower:
            score = 1.0
        if n < self.warmup:
            score = 0.0
        elif s.hold > 0:
            s.hold -= 1
            score = 0.0
        elif score >= thr:
            s.hold = self.suppress_samples
        # ---- the shift surprise (rebase and reasons)
        zs = s.zs + self.shift_alpha * (z - s.zs)
        s.zs = zs
        us = abs(zs) * self._shift_gain
        # ---- reason
        reason = None
        repeated = x == s.last_value
        if repeated:
            s.repeats += 1
        else:
            if s.repeats > s.longest_run:
                s.longest_run = s.repeats
            s.repeats = 0
        # stuck: a run of one value twice as long as any the series has shown (and at least
        # stuck_after), so quantised or often-idle series do not alarm on their usual runs
        need = 2 * s.longest_run + 1
        if need < self.stuck_after:
            need = self.stuck_after
        if n >= self.warmup and s.repeats == need:
            score, reason = max(score, thr), "stuck"
        elif score >= thr:
            if u >= us:
                reason = "spike"
            elif x > s.vmax + 0.5 * span or x < s.vmin - 0.5 * span:
                reason = "out_of_range"  # a sustained excursion beyond all the series has shown
            else:
                reason = "level_shift" if abs(s.jump) >= clip else "drift"
        # ---- learn (clipped, so anomalies barely move the baselines)
        a = self.level_alpha
        if abs(zs) > clip:
            s.side_run = s.side_run + 1
        else:
            s.side_run = 0
        if s.side_run >= self.rebase_after:
            # a confirmed shift: the new level is the normal now
            s.level = x
            s.side_run = 0
            s.zs = 0.0
        else:
            el = e_level / mae
            if el > clip:
                el = clip
            elif el < -clip:
                el = -clip
            s.level = level + a * el * mae
        ea = self.error_alpha
        ael = abs(e_level)
        if n * ea < 1.0:
            # the first 1 / error_alpha samples: a plain running mean (no clipping before
            # there is a scale to clip at), then the clipped exponential mean
            s.mae += (ael - s.mae) / n
        else:
            s.mae += ea * ((ael if ael < clip * mae else clip * mae) - s.mae)
        if season is not None:
            if e_season is None:
                season[b] = x
            else:
                smae = s.s_mae if s.s_mae > scale_floor else scale_floor
                aes = abs(e_season)
                s.s_n += 1
                # selection errors: unclipped (a forecast's failures are the point) and long
                # (~1 / SELECT_ALPHA samples, so twice-a-day failures are remembered)
                s.s_sel += SELECT_ALPHA * (aes - s.s_sel) if s.s_n > 1 else aes
                s.l_sel += SELECT_ALPHA * (ael - s.l_sel)
                if s.s_n * ea < 1.0:
                    s.s_mae += (aes - s.s_mae) / s.s_n
                else:
                    s.s_mae += ea * ((aes if aes < clip * smae else clip * smae) - s.s_mae)
                es = e_season if -clip * smae <= e_season <= clip * smae else (
                    clip * smae if e_season > 0 else -clip * smae)
                season[b] = season[b] + self.season_alpha * es
        zc = z if -clip <= z <= clip else (clip if z > 0 else -clip)
        s.jump = zc if u >= clip else s.jump * 0.8
        s.last_value = x
        if x < s.vmin:
            s.vmin = x
        elif x > s.vmax:
            s.vmax = x
        s.n = n + 1
        # band: beyond it, a value is out of range and alarms on its own
        return score, expected, lower, upper, reason

    # ------------------------------------------------------------------ silence
    def silent_series(self, now_event_ms: int) -> list[dict]:
        """One ``silent`` record per series quiet for more than ``silence_factor`` intervals.

        Each silence episode is reported once (the next sample of the series re-arms it).
        Series silent for longer than ``evict_after_ms`` are forgotten (bounded memory).
        """
        out = []
        evict = []
        for key, s in self._series.items():
            if s.n < 3 or s.dt_ew <= 0.0:
                continue
            quiet = now_event_ms - s.t_last
            if quiet > self.evict_after_ms:
                evict.append(key)
                continue
            if not s.silent_reported and quiet > self.silence_factor * s.dt_ew:
                s.silent_reported = True
                host, _, metric = key.partition("/")
                out.append({"event_id": f"silent:{key}:{s.t_last}", "event_time": now_event_ms,
                            "host": host, "metric": metric, "value": None, "score": 1.0,
                            "expected": s.level, "lower": None, "upper": None,
                            "reason": "silent", "scored_at": now_event_ms,
                            "last_seen": s.t_last})
        for key in evict:
            del self._series[key]
        return out

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict:
        """JSON-able state that resumes *after* the last scored sample.

        Restoring it (:meth:`load_state`) and scoring the next samples gives the same scores
        as never having stopped.
        """
        return {"version": STATE_VERSION, "model_version": self.model_version,
                "series": {k: s.to_state() for k, s in self._series.items()}}

    def load_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"metric scorer state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}: discard it and let the series warm up again")
        self._series.clear()
        for key, s in state["series"].items():
            self._series[key] = _Series.from_state(s)
