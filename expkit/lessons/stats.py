"""The statistics a lesson's verdict rests on: per arm (the jobs that differ only in their
seed) the mean and standard deviation of a number, and per comparison of two arms a Welch
t-test. Pure numbers: no job folders, no torch.

The rule, stated in every report (RULE): a comparison is "reproduced" when the difference
of the two arms' means points the way the claim says and its 95% confidence interval
(Welch's t, unequal variances) excludes zero, i.e. a two-sided Welch t-test at 0.05;
"not reproduced" when it points the other way and the interval excludes zero (or when both
arms gave exactly the same numbers); otherwise "inconclusive", and always with fewer than
two seeds in an arm, or when a comparison names the smallest difference that matters
(min_effect) and the difference of the means is smaller than that: two networks that both
stall at chance differ by noise that a t-test may still call significant. A lesson is
reproduced when every comparison is, not reproduced when any comparison is not, and
inconclusive otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05
MIN_SEEDS = 2
RULE = ("Verdict rule: each comparison is a two-sided Welch t-test at 0.05 on the per-seed numbers of two arms: "
        "**reproduced** when the difference points the way the claim says and its 95% confidence interval "
        "excludes zero, **not reproduced** when it points the other way and the interval excludes zero (or both "
        "arms gave identical numbers), **inconclusive** otherwise, with fewer than 2 seeds per arm, or when the "
        "difference is below the smallest that matters where a comparison names one. The lesson "
        "is reproduced when every comparison is, not reproduced when any comparison is not.")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def std(values: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for one value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_quantile(q: float, df: float) -> float:
    from scipy.stats import t  # scipy comes with scikit-learn, which the digits data needs

    return float(t.ppf(q, df))


def t_sf(x: float, df: float) -> float:
    from scipy.stats import t

    return float(t.sf(x, df))


@dataclass
class Comparison:
    """`arm` against `baseline` on one number per seed; `higher` says which way the claim
    expects `arm` to differ."""

    claim: str
    metric: str
    arm: str
    baseline: str
    arm_values: list[float]
    base_values: list[float]
    higher: bool = True
    min_effect: float = 0.0  # a smaller difference of the means is no evidence either way
    verdict: str = "inconclusive"
    diff: float = math.nan  # mean(arm) - mean(baseline)
    low: float = math.nan  # its 95% confidence interval
    high: float = math.nan
    p: float = math.nan
    note: str = ""

    def __post_init__(self) -> None:
        decide(self)


def welch(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), its standard error, Welch's degrees of freedom and the two-sided p."""
    diff = mean(a) - mean(b)
    va, vb = std(a) ** 2 / len(a), std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, 0.0, math.inf, (1.0 if diff == 0 else 0.0)
    df = (va + vb) ** 2 / ((va * va / (len(a) - 1) if va else 0.0) + (vb * vb / (len(b) - 1) if vb else 0.0))
    return diff, se, df, min(1.0, 2 * t_sf(abs(diff) / se, df))


def decide(c: Comparison) -> Comparison:
    a = [v for v in c.arm_values if v is not None and math.isfinite(v)]
    b = [v for v in c.base_values if v is not None and math.isfinite(v)]
    if a and b:
        c.diff = mean(a) - mean(b)
    if len(a) < MIN_SEEDS or len(b) < MIN_SEEDS:
        c.verdict = "inconclusive"
        c.note = f"needs at least {MIN_SEEDS} seeds per arm (this sweep has {len(a)} and {len(b)})"
        return c
    c.diff, se, df, c.p = welch(a, b)
    half = 0.0 if se == 0 else t_quantile(1 - ALPHA / 2, df) * se
    c.low, c.high = c.diff - half, c.diff + half
    toward = c.diff if c.higher else -c.diff  # > 0: the way the claim says
    if abs(c.diff) < c.min_effect:
        c.verdict = "inconclusive"
        c.note = f"the difference is below {c.min_effect:g}, the smallest that matters here"
    elif se == 0 and c.diff == 0:
        c.verdict, c.note = "not reproduced", "both arms gave identical numbers"
    elif c.low > 0 or c.high < 0:
        c.verdict = "reproduced" if toward > 0 else "not reproduced"
    else:
        c.verdict = "inconclusive"
        c.note = "the 95% interval of the difference includes zero"
    return c


def overall(comparisons: list[Comparison]) -> str:
    verdicts = [c.verdict for c in comparisons]
    if not verdicts:
        return "inconclusive"
    if "not reproduced" in verdicts:
        return "not reproduced"
    return "reproduced" if all(v == "reproduced" for v in verdicts) else "inconclusive"
