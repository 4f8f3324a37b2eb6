"""Online anomaly scoring of system metrics, one detector state per series (host x metric).

How a sample is scored (all in event time, no look-ahead, one pass, O(1) per sample):

1. **Two forecasts, the better one wins.** A robust level (an exponentially weighted mean
   updated with *clipped* residuals, so an outlier moves it by at most a few noise units) and,
   once a day of data has been seen, a seasonal profile (per time-of-day bin, the same clipped
   update across days). Each keeps the EW mean absolute error of its own forecasts; the
   forecast with the smaller recent error is the expected value. Daily patterns (and square
   waves) are then predicted rather than flagged, and a series without seasonality falls back
   to its level.
2. **Multi-scale residuals.** The residual in units of that error is the *point* surprise
   (spikes); its short exponentially weighted mean is the *shift* surprise (level shifts and
   drift: many moderately high residuals of one sign).
3. **Calibrated by the series' own history.** Peaks over a threshold (extreme-value theory):
   the rate of surprises beyond ``TAIL_FROM`` error units and their mean excess, learned per
   series, give the tail probability ``p`` of the current surprise under an exponential tail;
   ``D = -log10(p)`` ("decades of rarity") maps to ``score = D / (D + c)`` with ``c`` such that
   ``ALARM_DECADES`` scores ``anomaly_threshold``. One threshold means the same rarity on every
   series, and the map never saturates (no ties at the top of the ranking).
4. **One alarm per episode.** After a score reaches ``anomaly_threshold``, later samples of the
   same episode are reported just under the threshold unless they are more surprising than the
   episode's peak; the episode ends after ``quiet_samples`` calm samples. A level shift that
   persists is absorbed: after ``rebase_after`` samples off to one side, the level is reset to
   the new one, so an incident does not alarm forever, and does not become the normal at once.

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
# Calibration by peaks over a threshold (extreme-value theory, an exponential tail): surprises
# beyond TAIL_FROM error units are the tail; P(surprise > u) = rate * exp(-(u - TAIL_FROM) /
# mean_excess), with the rate and the mean excess learned per series. 3 units of mean absolute
# error is ~2.4 sd of Gaussian noise (1.6 % of samples): far enough out to be a tail, common
# enough to be learned in a day. The priors are those of Gaussian noise.
TAIL_FROM = 3.0
PRIOR_TAIL_RATE = 0.016
PRIOR_TAIL_MEAN = 0.5
# The seasonal forecast must beat the level's error by 20 % to take over (hysteresis).
SWITCH_GAIN = 0.8
# One excess counts at most 10 mean excesses in the tail's estimate.
EXCESS_CAP = 10.0
# Rarity (-log10 of the tail probability) that scores ``anomaly_threshold``: 1e-7 is about one
# false alarm per series per 3 years at one sample a minute.
ALARM_DECADES = 7.0
# Samples rarer than 1 in 100 are not calm: they keep an anomaly episode open.
CALM_DECADES = 2.0
DAY_MS = 86_400_000
_LOG10 = math.log(10.0)
STATE_VERSION = 1


class _Series:
    """The detector state of one series; plain floats so that it serialises to JSON."""

    __slots__ = (
        "n", "t_first", "t_last", "dt_ew", "level", "mae", "season", "s_mae", "s_n", "seasonal", "s_sel", "l_sel", "bin_ms",
        "zs", "tail_rate", "tail_sum", "episode_peak", "calm", "side_run", "last_value",
        "repeats", "longest_run", "vmin", "vmax", "silent_reported", "jump",
    )

    def __init__(self) -> None:
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
        self.tail_rate = PRIOR_TAIL_RATE
        self.tail_sum = PRIOR_TAIL_RATE * PRIOR_TAIL_MEAN
        self.episode_peak = 0.0
        self.calm = 0
        self.side_run = 0
        self.last_value = 0.0
        self.repeats = 0
        self.longest_run = 0
        self.vmin = 0.0
        self.vmax = 0.0
        self.silent_reported = False
        self.jump = 0.0

    def to_state(self) -> dict:
        state = {k: getattr(self, k) for k in self.__slots__ if k != "season"}
        state["season"] = (None if self.season is None
                           else [None if v != v else v for v in self.season])
        return state

    @classmethod
    def from_state(cls, state: dict) -> _Series:
        s = cls()
        for k in cls.__slots__:
            if k != "season":
                setattr(s, k, state[k])
        season = state["season"]
        s.season = None if season is None else array(
            "d", [math.nan if v is None else v for v in season])
        return s


class MetricScorer:
    """Score each sample of each series against that series' own behaviour.

    Parameters
    ----------
    anomaly_threshold
        Scores at or above it are alarms; the episode logic keeps follow-up samples under it.
    warmup
        Samples of a new series scored 0 while its baseline forms (no alarm storm).
    level_alpha
        Weight of a new sample in the robust level: 0.05 is a ~20-sample memory, short enough
        to follow slow trends, long enough to average noise out.
    season_alpha
        Weight of a new day in a time-of-day bin: 0.5 halves the influence of any one day, so a
        one-day incident leaves only a clipped trace on the next day's forecast.
    error_alpha
        Memory of the forecast errors (0.02: ~50 samples), which pick the forecast and scale
        the residuals.
    shift_alpha
        The short mean of residuals that reveals level shifts: 0.25, a ~7-sample span.
    calib_alpha
        Memory of the log-surprise distribution: 0.002, ~500 samples (about two days at 5 min),
        long enough to hold a few rare events, short enough to adapt to a changed regime.
    clip
        Residuals are clipped at ``clip`` error units when they update the baselines: 3 is the
        usual Huber/winsorising choice (clean Gaussian noise is barely touched).
    quiet_samples
        Calm samples (standardised surprise below 2) that end an anomaly episode.
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

    model_version = "metric-robust-seasonal-v1"

    def __init__(self, *, anomaly_threshold: float = 0.9, warmup: int = 200,
                 level_alpha: float = 0.05, season_alpha: float = 0.5,
                 error_alpha: float = 0.02, shift_alpha: float = 0.25,
                 calib_alpha: float = 0.002, clip: float = 3.0, quiet_samples: int = 12,
                 rebase_after: int = 12, stuck_after: int = 30, silence_factor: float = 5.0,
                 max_series: int = 50_000, evict_after_ms: int = 7 * DAY_MS) -> None:
        self.anomaly_threshold = anomaly_threshold
        self.warmup = warmup
        self.level_alpha = level_alpha
        self.season_alpha = season_alpha
        self.error_alpha = error_alpha
        self.shift_alpha = shift_alpha
        self.calib_alpha = calib_alpha
        self.clip = clip
        self.quiet_samples = quiet_samples
        self.rebase_after = rebase_after
        self.stuck_after = stuck_after
        self.silence_factor = silence_factor
        self.max_series = max_series
        self.evict_after_ms = evict_after_ms
        self._series: BoundedDict[str, _Series] = BoundedDict(max_series)
        # The short mean of i.i.d. residuals has a smaller spread than one residual: this
        # factor puts both surprises on one scale (sd of an EW mean = sqrt(a / (2 - a))).
        self._shift_gain = math.sqrt((2.0 - shift_alpha) / shift_alpha)
        # score = decades / (decades + half): ALARM_DECADES of rarity score anomaly_threshold
        self._decades_half = ALARM_DECADES * (1.0 - anomaly_threshold) / anomaly_threshold

    # ------------------------------------------------------------------ the hot path
    def score_record(self, event: dict, scored_at_ms: int) -> dict:
        """Score one sample; learn from it; return the event with the score fields."""
        key = f"{event['host']}/{event['metric']}"
        series = self._series
        s = series.get(key)
        if s is None:
            s = _Series()
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
        # ---- forecasts
        level = s.level
        scale_floor = 1e-9 + 1e-6 * abs(level)
        mae = s.mae if s.mae > scale_floor else scale_floor
        expected, scale = level, mae
        e_level = x - level
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
                # hysteresis: the seasonal forecast takes over when clearly better (20 % less
                # error), and hands back only when worse, so noisy series do not flap
                if s.s_n * self.error_alpha >= 1.0:
                    use = s.s_sel < (s.l_sel if s.seasonal else SWITCH_GAIN * s.l_sel)
                    if use != s.seasonal:
                        # a new forecast: the tail learned on the other one's surprises is moot
                        s.seasonal = use
                        s.tail_rate = PRIOR_TAIL_RATE
                        s.tail_sum = PRIOR_TAIL_RATE * PRIOR_TAIL_MEAN
                if s.seasonal:
                    expected = sv
                    smae = s.s_mae
                    scale = smae if smae > scale_floor else scale_floor
        z = (x - expected) / scale
        # ---- multi-scale surprise
        zc = z if -clip <= z <= clip else (clip if z > 0 else -clip)
        zs = s.zs + self.shift_alpha * (z - s.zs)
        s.zs = zs
        u = abs(z)
        us = abs(zs) * self._shift_gain
        surprise = u if u >= us else us
        # ---- calibration: the tail of the series' own surprises (peaks over a threshold)
        rate = s.tail_rate
        if rate < self.calib_alpha:
            # fewer than ~1 excess in the memory: fall back on the Gaussian prior's mean excess
            beta = PRIOR_TAIL_MEAN
            rate = self.calib_alpha
        else:
            beta = s.tail_sum / rate
        if surprise > TAIL_FROM:
            decades = -math.log10(rate) + (surprise - TAIL_FROM) / (beta * _LOG10)
        else:
            decades = -math.log10(rate) * surprise / TAIL_FROM
        raw = decades / (decades + self._decades_half)
        # ---- episode: one alarm, then follow-ups held under the threshold
        thr = self.anomaly_threshold
        score = raw
        if n < self.warmup:
            score = 0.0
        elif s.episode_peak > 0.0:
            if raw > s.episode_peak:
                s.episode_peak = raw
            else:
                score = raw if raw < thr else thr * 0.999
        elif raw >= thr:
            s.episode_peak = raw
        if decades < CALM_DECADES:
            s.calm += 1
            if s.calm >= self.quiet_samples:
                s.episode_peak = 0.0
        else:
            s.calm = 0
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
            span = s.vmax - s.vmin
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
                # (~1 / calib_alpha samples, so twice-a-day failures are remembered)
                s.s_sel += self.calib_alpha * (aes - s.s_sel) if s.s_n > 1 else aes
                s.l_sel += self.calib_alpha * (ael - s.l_sel)
                if s.s_n * ea < 1.0:
                    s.s_mae += (aes - s.s_mae) / s.s_n
                else:
                    s.s_mae += ea * ((aes if aes < clip * smae else clip * smae) - s.s_mae)
                es = e_season if -clip * smae <= e_season <= clip * smae else (
                    clip * smae if e_season > 0 else -clip * smae)
                season[b] = season[b] + self.season_alpha * es
        # The tail is a windowed estimate (~1 / calib_alpha samples): the rate of excesses and
        # their mean, as two exponentially weighted sums over every sample, so old excesses fade
        # once they stop. One excess counts at most EXCESS_CAP mean excesses: a recurring spike
        # is learned within a few occurrences, one incident does not blind the detector.
        ca = self.calib_alpha
        if n * ea >= 1.0:  # before there is an error scale, surprises mean nothing
            keep = 1.0 - ca
            if surprise > TAIL_FROM:
                excess = surprise - TAIL_FROM
                cap = EXCESS_CAP * beta
                s.tail_rate = keep * s.tail_rate + ca
                s.tail_sum = keep * s.tail_sum + ca * (excess if excess < cap else cap)
            else:
                s.tail_rate *= keep
                s.tail_sum *= keep
        s.jump = zc if u >= clip else s.jump * 0.8
        s.last_value = x
        if x < s.vmin:
            s.vmin = x
        elif x > s.vmax:
            s.vmax = x
        s.n = n + 1
        # band: where the point surprise alone would reach the alarm threshold
        half = scale * (TAIL_FROM + beta * _LOG10 * (ALARM_DECADES + math.log10(rate)))
        return score, expected, expected - half, expected + half, reason

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
