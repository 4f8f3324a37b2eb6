"""Online anomaly scoring of system metrics, one detector state per series (host x metric).

How a sample is scored (all in event time, no look-ahead, one pass, O(1) per sample):

1. **Forecasts.** A robust level (an exponentially weighted mean updated with *clipped*
   residuals, so an outlier moves it by at most a few noise units) and two seasonal profiles,
   a day and a week (per phase bin, the same clipped update across periods; each forecasts once
   a period of data has been seen). Each keeps the EW mean absolute error (MAE) of its
   forecasts; a seasonal profile also per phase bin, so that a phase that is always noisier
   (the busy hours) is judged at its own scale. A more detailed forecast (level < day < week) is used only where its long-run
   error is clearly (20 %) below the current one's, and only once it has forecast half a
   period (daily patterns, square waves and weekday/weekend patterns are then predicted rather
   than flagged).
2. **Raw surprise.** Each forecast's residual in MAE units, capped at ``RAW_CAP`` and scaled to
   [0, 1].
3. **Anomaly likelihood** (Numenta's, as in HTM's NAB detector): the mean of the last
   ``short_window`` raw surprises is compared with the distribution (EW mean and variance over
   ~``long_window`` samples) of that same mean in the series' history; the Gaussian tail
   probability ``p`` of the current mean gives ``score = log(p + 1e-10) / log(1e-10)`` (0.5
   at p = 1e-5, 0.9 at p = 1e-9). A series is judged against its *own* normal variability of
   surprise: noisy series need a longer or larger excursion than quiet ones. With a seasonal
   profile in use, the likelihood of its surprise is the score. A second, slower time scale (an EW mean of
   the surprise over ~``slow_window`` samples, judged the same way) is max-combined with it.
   **Accumulated evidence**: the EW mean of that score over ~``evidence_window`` samples, judged
   against its own distribution (z amplified by ``evidence_gain``), is max-combined too: an
   anomaly that shows as a run of moderate scores (a day that keeps departing from its weekly
   profile, a new oscillation) adds up to an alarm, where no single sample is rare enough.
   **Contextual novelty** (a second, structurally different detector, in the spirit of NAB's
   CAD-OSE): values are quantised (bins fixed once, after ``NOVELTY_FIX_AFTER`` samples: a
   ``novelty_levels``-th of the range seen so far, at least ``novelty_mae`` of the level's
   MAE, so a quantised series' jitter shares one bin) and each context (the last three bins)
   is looked up in a bitmap of the contexts seen before; the EW mean (span
   ``novelty_window``) of "never seen" is judged against its own distribution like the
   likelihood and max-combined. A pattern the series never showed (a new oscillation, a blip
   to a level it never visited, a slow slide into new territory) alarms even where its
   residuals are not unusual; contexts that recur (periodic resets, a square wave) are soon
   known and stay quiet. A slower novelty rate (span ``novelty_slow_window``) is max-combined
   too: a new regime whose novel contexts come a few at a time.
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
first sight); daily seasonality needs 1.5 days of data and a sampling interval of 2 hours or
less, weekly seasonality 1.5 weeks and an interval of 14 hours or less.
"""

from __future__ import annotations

import base64
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
STATE_VERSION = 8
# The accumulated evidence judges only after this many of its spans: before, the distribution
# of its EW mean has seen too little to call anything rare (a young series would alarm).
EVIDENCE_AFTER = 4
# Per phase bin, the EW mean absolute error across periods (weight of a new period): noise that
# differs by phase (a quiet night, a noisy day) is judged at its own phase's scale ...
BIN_ERROR_ALPHA = 0.5
# ... floored at the profile's overall error and discounted (one sample per period makes it a
# noisy estimate): the scale is max(overall MAE, BIN_ERROR_FLOOR * the bin's MAE).
BIN_ERROR_FLOOR = 0.7
# The seasonal periods tried: a day and a week.
PERIODS_MS = (DAY_MS, 7 * DAY_MS)
# Contextual novelty: the quantisation is fixed after this many samples (the range seen so far
# must mean something; fixed, so that a context means the same thing all the series' life) ...
NOVELTY_FIX_AFTER = 100
# ... and judged after this many more (while the bitmap fills, everything is novel).
NOVELTY_AFTER = 300
# The bitmap of seen contexts: 2**14 bits (2 KB a series). One hash bit a context: a full
# bitmap only makes novelty rarer (a false "seen"), never an alarm.
NOVELTY_BYTES = 2048
_NOVELTY_MASK = NOVELTY_BYTES * 8 - 1
# Bins beyond +-this many from the first are one bin (an int that stays small to hash).
_NOVELTY_MAX_BIN = 9999
_NOVELTY_BINS = 2 * _NOVELTY_MAX_BIN + 1
# The floor of the novelty rate's standard deviation: on a very regular series one novel
# context (the EW mean jumps by 2 / (novelty_window + 1)) is no alarm, a few close together are
# (0.06-0.1 score alike on NAB; MIN_STD, 0.03, let single quantisation accidents alarm).
NOVELTY_MIN_STD = 0.08
# ... and of the slower novelty rate (span novelty_slow_window: its EW mean moves less a novel
# context; 0.04-0.05 score alike on NAB).
NOVELTY_SLOW_MIN_STD = 0.04


class _Series:
    """The detector state of one series; plain floats so that it serialises to JSON."""

    __slots__ = (
        "n", "t_first", "t_last", "dt_ew", "level", "mae", "profiles", "mode",
        "l_sel", "zs", "side_run", "last_value", "repeats", "longest_run",
        "vmin", "vmax", "silent_reported", "jump", "hold",
        "l_buf", "l_sum", "l_mean", "l_var", "m_ew", "m_mean", "m_var",
        "e_ew", "e_mean", "e_var",
        "q0", "qw", "qa", "qb", "nq", "seen", "v_ew", "v_mean", "v_var", "w_ew", "w_mean", "w_var",
    )
    _ARRAYS = ("l_buf",)

    def __init__(self, short_window: int = 10) -> None:
        self.n = 0
        self.t_first = 0
        self.t_last = 0
        self.dt_ew = 0.0
        self.level = 0.0
        self.mae = 0.0
        self.profiles: list[_Profile] | None = None
        self.mode = -1  # -1: the level forecast; i: profiles[i]
        self.l_sel = 0.0
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
        # the slower time scale: the EW mean of the surprise in use, and its EW mean / variance
        self.m_ew = 0.0
        self.m_mean = 0.0
        self.m_var = 0.0
        # accumulated evidence: the EW mean of the likelihood score, and its EW mean / variance
        self.e_ew = 0.0
        self.e_mean = 0.0
        self.e_var = 0.0
        # contextual novelty: the bins (origin, width), the last two bins, samples since the
        # bins were fixed, the bitmap of seen contexts (None until fixed), and the EW mean of
        # "novel" with its EW mean / variance
        self.q0 = 0.0
        self.qw = 0.0
        self.qa = 0
        self.qb = 0
        self.nq = 0
        self.seen: bytearray | None = None
        self.v_ew = 0.0
        self.v_mean = 0.0
        self.v_var = 0.0
        # the same on a slower time scale (a new regime: novel contexts spread over a stretch)
        self.w_ew = 0.0
        self.w_mean = 0.0
        self.w_var = 0.0

    def to_state(self) -> dict:
        state = {k: getattr(self, k) for k in self.__slots__
                 if k not in self._ARRAYS and k not in ("profiles", "seen")}
        state["seen"] = None if self.seen is None else base64.b64encode(self.seen).decode()
        state["profiles"] = None if self.profiles is None else [
            p.to_state() for p in self.profiles]
        for k in self._ARRAYS:
            a = getattr(self, k)
            state[k] = None if a is None else [None if v != v else v for v in a]
        return state

    @classmethod
    def from_state(cls, state: dict) -> _Series:
        s = cls()
        for k in cls.__slots__:
            if k not in cls._ARRAYS and k not in ("profiles", "seen"):
                setattr(s, k, state[k])
        s.seen = None if state["seen"] is None else bytearray(base64.b64decode(state["seen"]))
        s.profiles = None if state["profiles"] is None else [
            _Profile.from_state(p) for p in state["profiles"]]
        for k in cls._ARRAYS:
            a = state[k]
            setattr(s, k, None if a is None else array(
                "d", [math.nan if v is None else v for v in a]))
        return s


class _Profile:
    """One seasonal profile (a period: a day or a week) of a series: per phase bin, the
    clipped mean across periods and its error, with the likelihood of its surprise.

    The per-bin arrays are single precision (at most 2,016 bins a week at 5-minute bins: about
    18 KB a series for both profiles; a profile's values and errors need no more than 7
    digits)."""

    __slots__ = ("bin_ms", "vals", "bmae", "mae", "n", "sel", "buf", "sum", "mean", "var", "seen",
                 "z")

    def __init__(self, bin_ms: int = 0, bins: int = 0, short_window: int = 10) -> None:
        self.bin_ms = bin_ms
        self.vals = array("f", [math.nan]) * bins
        self.bmae = array("f", [math.nan]) * bins
        self.mae = 0.0
        self.n = 0
        self.sel = 0.0
        self.buf = array("d", [0.0]) * short_window
        self.sum = 0.0
        self.mean = 0.0
        self.var = 0.0
        self.seen = 0
        self.z = 0.0

    def to_state(self) -> dict:
        state = {k: getattr(self, k) for k in self.__slots__}
        state["vals"] = [None if v != v else v for v in self.vals]
        state["bmae"] = [None if v != v else v for v in self.bmae]
        state["buf"] = list(self.buf)
        return state

    @classmethod
    def from_state(cls, state: dict) -> _Profile:
        p = cls()
        for k in cls.__slots__:
            setattr(p, k, state[k])
        p.vals = array("f", [math.nan if v is None else v for v in state["vals"]])
        p.bmae = array("f", [math.nan if v is None else v for v in state["bmae"]])
        p.buf = array("d", state["buf"])
        return p


def _log_likelihood(z: float) -> float:
    """Score in [0, 1] of a standardised mean surprise ``z``: the log of its Gaussian tail
    (0 when the surprise is no higher than usual)."""
    if z <= 0.0:
        return 0.0
    p = 0.5 * math.erfc(z / _SQRT2)
    score = math.log(p + _TINY) / _LOG_TINY
    return 0.0 if score < 0.0 else (1.0 if score > 1.0 else score)


def _rate_surprise(ew: float, mean: float, var: float, x: float, alpha: float, la: float,
                   warm: bool, gain: float, min_std: float) -> tuple[float, float, float, float]:
    """One step of an EW mean of ``x`` judged against that mean's own running distribution.

    Returns the new (EW mean, its mean, its variance) and the likelihood score of the EW
    mean's deviation times ``gain`` (0 until ``warm``). One shape for the slow surprise, the
    accumulated evidence and both novelty rates.
    """
    ew += alpha * (x - ew)
    d = ew - mean
    score = 0.0
    if warm:
        std = math.sqrt(var)
        score = _log_likelihood(gain * d / (std if std > min_std else min_std))
    return ew, mean + la * d, (1.0 - la) * (var + la * d * d), score


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
        Weight of a new period in a phase bin of a seasonal profile: 0.5 halves the influence of
        any one day (week), so a one-day incident leaves only a clipped trace on the next
        period's forecast.
    error_alpha
        Memory of the forecast errors (0.02: ~50 samples) that scale the residuals.
    shift_alpha
        The short mean of residuals that reveals level shifts (for ``rebase_after`` and the
        reasons): 0.25, a ~7-sample span.
    short_window, long_window
        The anomaly likelihood: the mean of the last ``short_window`` raw surprises against
        the distribution of that mean over ~``long_window`` samples (Numenta: 10 and a few
        thousand).
    slow_window
        A second, slower time scale of the likelihood: the EW mean (span ``slow_window``) of
        the surprise of the forecast in use, against its own distribution; the score is the
        larger of the two (a run of moderate surprises denser than usual, e.g. spikes coming
        more often, stands out over ~20 samples where 10 are too few).
    evidence_window, evidence_gain
        Accumulated evidence: the EW mean (span ``evidence_window``) of the likelihood score,
        against its own distribution over ~``long_window`` samples; its standardised excess is
        multiplied by ``evidence_gain`` before the Gaussian tail (an EW mean of a score is far
        from Gaussian: its upper tail is heavy, so the plain tail would never alarm; 1.5 puts
        a run of moderate scores of ~80 samples at the level of one rare sample).
    novelty_window, novelty_levels, novelty_mae
        Contextual novelty: the span of the EW mean of "context never seen" (10: a handful of
        novel contexts close together); the bins, a ``novelty_levels``-th of the range seen in
        the first ``NOVELTY_FIX_AFTER`` samples, at least ``novelty_mae`` times the level's MAE
        then (half an error unit: finer bins make every jitter novel, coarser ones make a
        rare novelty look significant on quiet series; 0.4-0.75 score alike on NAB).
    novelty_slow_window, novelty_slow_gain
        A second, slower novelty rate (EW span ``novelty_slow_window``), judged the same way
        with its standardised excess multiplied by ``novelty_slow_gain`` (as the accumulated
        evidence's: an EW mean of rare 0/1 events has a heavy upper tail) and max-combined: a
        new regime whose novel contexts come a few at a time (a new oscillation between known
        values) adds up over ~80 samples where 10 show nothing rare (NAB nab-dev: span 60-80,
        gain 1.5-1.75 score alike).
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

    model_version = "metric-likelihood-v8"

    def __init__(self, *, anomaly_threshold: float = 0.9, warmup: int = 300,
                 level_alpha: float = 0.05, season_alpha: float = 0.5,
                 error_alpha: float = 0.02, shift_alpha: float = 0.25,
                 short_window: int = 10, slow_window: int = 20, long_window: int = 2000,
                 evidence_window: int = 80, evidence_gain: float = 1.5,
                 novelty_window: int = 10, novelty_levels: int = 20, novelty_mae: float = 0.5,
                 novelty_slow_window: int = 80, novelty_slow_gain: float = 1.6,
                 range_tolerance: float = 0.05, suppress_samples: int = 200,
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
        self.slow_window = slow_window
        self._slow_alpha = 2.0 / (slow_window + 1.0)
        self.evidence_window = evidence_window
        self.evidence_gain = evidence_gain
        self._evidence_alpha = 2.0 / (evidence_window + 1.0)
        self.novelty_window = novelty_window
        self._novelty_alpha = 2.0 / (novelty_window + 1.0)
        self.novelty_slow_window = novelty_slow_window
        self.novelty_slow_gain = novelty_slow_gain
        self._novelty_slow_alpha = 2.0 / (novelty_slow_window + 1.0)
        self.novelty_levels = novelty_levels
        self.novelty_mae = novelty_mae
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
        expected = level
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
        # ---- the seasonal forecasts (a day, a week) and their likelihoods
        profiles = s.profiles
        if profiles is None and n >= 16 and s.dt_ew > 0.0:
            # fix the bin width once: the sampling interval, at least 5 min (<= 288 bins a day)
            bin_ms = max(300_000, int(s.dt_ew))
            profiles = [_Profile(bin_ms, period // bin_ms, k) for period in PERIODS_MS
                        if period // bin_ms >= 12]
            s.profiles = profiles
        errs = None
        if profiles:
            errs = []
            ea = self.error_alpha
            for p in profiles:
                vals = p.vals
                b = (t // p.bin_ms) % len(vals)
                sv = vals[b]
                if sv != sv:  # not filled yet
                    errs.append((b, None, 0.0))
                    continue
                e = x - sv
                pm = p.mae if p.mae > scale_floor else scale_floor
                bm = p.bmae[b]
                if bm == bm and BIN_ERROR_FLOOR * bm > pm:
                    pm = BIN_ERROR_FLOOR * bm
                errs.append((b, e, pm))
                up = abs(e) / pm
                rs = (up if up < RAW_CAP else RAW_CAP) / RAW_CAP
                pbuf = p.buf
                slot = p.seen % k
                p.sum += rs - pbuf[slot]
                pbuf[slot] = rs
                pshort = p.sum / k
                pstd = math.sqrt(p.var)
                p.z = (pshort - p.mean) / (pstd if pstd > MIN_STD else MIN_STD)
                d = pshort - p.mean
                if p.seen == 0:
                    p.mean = pshort
                else:
                    p.mean += la * d
                    p.var = (1.0 - la) * (p.var + la * d * d)
                p.seen += 1
            # hysteresis: a more detailed forecast (level < day < week) takes over when clearly
            # better (20 % less error), a simpler one whenever it is no worse; a profile is a
            # candidate once it has forecast half a period (its error is then a fair mean)
            mode = s.mode
            cur = s.l_sel if mode < 0 else profiles[mode].sel
            best, best_cost = mode, cur
            if mode >= 0 and s.l_sel <= best_cost:
                best, best_cost = -1, s.l_sel
            for i, p in enumerate(profiles):
                if i == mode or errs[i][1] is None or 2 * p.n < len(p.vals):
                    continue
                cost = p.sel / SWITCH_GAIN if i > mode else p.sel
                if cost < best_cost:
                    best, best_cost = i, cost
            s.mode = best
            if best >= 0 and errs[best][1] is not None:
                p = profiles[best]
                _, e, pm = errs[best]
                expected = x - e
                z = e / pm
                u = abs(z)
                zl = p.z
        # ---- score: the likelihood, out of range, warm-up, suppression
        thr = self.anomaly_threshold
        score = _log_likelihood(zl)
        # ---- a slower time scale: the same likelihood of an EW mean of the surprise in use
        # (a denser run of moderate surprises than the short window shows)
        r2 = (u if u < RAW_CAP else RAW_CAP) / RAW_CAP
        s.m_ew, s.m_mean, s.m_var, slow = _rate_surprise(
            s.m_ew, s.m_mean, s.m_var, r2, self._slow_alpha, la, n > self.slow_window, 1.0,
            MIN_STD)
        if slow > score:
            score = slow
        # ---- accumulated evidence: a run of moderate scores, rare for this series
        s.e_ew, s.e_mean, s.e_var, evidence = _rate_surprise(
            s.e_ew, s.e_mean, s.e_var, score, self._evidence_alpha, la,
            n > EVIDENCE_AFTER * self.evidence_window, self.evidence_gain, MIN_STD)
        if evidence > score:
            score = evidence
        # ---- contextual novelty: how often the last three bins form a context never seen
        seen = s.seen
        if seen is None and n >= NOVELTY_FIX_AFTER:
            s.q0 = s.vmin
            s.qw = max((s.vmax - s.vmin) / self.novelty_levels, self.novelty_mae * s.mae,
                       scale_floor)
            s.seen = seen = bytearray(NOVELTY_BYTES)
        if seen is not None:
            q = int((x - s.q0) // s.qw)
            if q > _NOVELTY_MAX_BIN:
                q = _NOVELTY_MAX_BIN
            elif q < -_NOVELTY_MAX_BIN:
                q = -_NOVELTY_MAX_BIN
            # the context as one int, mixed by Fibonacci hashing (the same in every process and
            # Python version, so a restored bitmap means what it meant)
            key = ((s.qa + _NOVELTY_MAX_BIN) * _NOVELTY_BINS + s.qb + _NOVELTY_MAX_BIN) \
                * _NOVELTY_BINS + q + _NOVELTY_MAX_BIN
            h = ((key * 0x9E3779B97F4A7C15) >> 29) & _NOVELTY_MASK
            byte, bit = h >> 3, 1 << (h & 7)
            novel = 0.0 if seen[byte] & bit else 1.0
            seen[byte] |= bit
            s.qa, s.qb = s.qb, q
            s.nq += 1
            warm = s.nq > NOVELTY_AFTER
            s.v_ew, s.v_mean, s.v_var, nov = _rate_surprise(
                s.v_ew, s.v_mean, s.v_var, novel, self._novelty_alpha, la, warm, 1.0,
                NOVELTY_MIN_STD)
            # the slower novelty rate: a new regime (a new oscillation, a new shape) whose novel
            # contexts come a few at a time, too spread out for the short span
            s.w_ew, s.w_mean, s.w_var, slow_nov = _rate_surprise(
                s.w_ew, s.w_mean, s.w_var, novel, self._novelty_slow_alpha, la, warm,
                self.novelty_slow_gain, NOVELTY_SLOW_MIN_STD)
            if nov > score:
                score = nov
            if slow_nov > score:
                score = slow_nov
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
        if errs is not None:
            l_upd = False
            for p, (b, e, pb) in zip(profiles, errs):
                vals = p.vals
                if e is None:
                    vals[b] = x
                    continue
                pm = p.mae if p.mae > scale_floor else scale_floor
                ae = abs(e)
                bm = p.bmae[b]
                p.bmae[b] = ae if bm != bm else bm + BIN_ERROR_ALPHA * (
                    (ae if ae < clip * pb else clip * pb) - bm)
                p.n += 1
                # selection errors: unclipped (a forecast's failures are the point) and long
                # (~1 / SELECT_ALPHA samples, so twice-a-period failures are remembered)
                p.sel += SELECT_ALPHA * (ae - p.sel) if p.n > 1 else ae
                l_upd = True
                if p.n * ea < 1.0:
                    p.mae += (ae - p.mae) / p.n
                else:
                    p.mae += ea * ((ae if ae < clip * pm else clip * pm) - p.mae)
                es = e if -clip * pm <= e <= clip * pm else (clip * pm if e > 0 else -clip * pm)
                vals[b] = vals[b] + self.season_alpha * es
            if l_upd:
                s.l_sel += SELECT_ALPHA * (ael - s.l_sel)
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
