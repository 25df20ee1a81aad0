"""Step 1 of SoCE: correlations between categories across models, and the weakly-correlated set L.

L = {C_a : there is b != a with |rho[a, b]| < tau}. A category enters L once tau exceeds its
entry threshold, min over b != a of |rho[a, b]|: those thresholds show L for every tau at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from soce.scores import ScoreTable
from soce.errors import ConfigError

METHODS = ("pearson", "spearman")


def correlation_matrix(values: np.ndarray, method: str = "pearson") -> tuple[np.ndarray, np.ndarray]:
    """Correlations between the columns of `values` and the number of rows behind each.

    Pairwise-complete, as pandas' DataFrame.corr: for each pair, the rows missing either
    value are dropped. NaN where fewer than two rows remain or a column is constant there.
    """
    if method not in METHODS:
        raise ConfigError(f"method {method!r}: expected one of {METHODS}")
    if method == "spearman":
        from scipy.stats import rankdata  # 0.5 s to import: only when asked for

    k = values.shape[1]
    rho = np.full((k, k), np.nan)
    counts = np.zeros((k, k), dtype=int)
    present = ~np.isnan(values)
    for a in range(k):
        for b in range(a, k):
            rows = present[:, a] & present[:, b]
            x, y = values[rows, a], values[rows, b]
            if method == "spearman":
                x, y = rankdata(x), rankdata(y)
            rho[a, b] = rho[b, a] = _pearson(x, y)
            counts[a, b] = counts[b, a] = int(rows.sum())
    return rho, counts


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return math.nan if denom == 0 else float(np.clip(dx @ dy / denom, -1.0, 1.0))


NOISY = 0.5  # a category whose reliability is below this is mostly sampling noise between models
RELIABILITY = ("the share of its spread between models that is not sampling noise; where the noise is larger than the "
               "spread, 0, with the raw value (below 0) beside it")


def reliability_text(r: float) -> str:
    """A category's reliability as soce shows it everywhere (the log, report.md, entry_tau.png;
    analysis.json keeps both): a share, so never below 0; the raw value beside a clipped one."""
    if math.isnan(r):
        return "n/a"
    return f"{r:.2f}" if r >= 0 else f"0.00 (raw {r:.2f})"


def reliability(values: np.ndarray, sizes: Sequence[float | None]) -> tuple[float, ...]:
    """Per category (a column of `values`: the models' accuracies, as fractions or percentages),
    the share of its variance between models that is not binomial sampling noise:
    1 - mean over models of p(1-p)/n, over the variance of p between models (n: the category's
    examples, `sizes`). 1: every difference between models is real; 0 or below: the differences
    are no larger than n examples' noise. NaN where n is unknown, or the scores are the same for
    every model (a saturated category: no spread to measure)."""
    scale = 100.0 if np.nanmax(values, initial=0.0) > 1.0 else 1.0
    out = []
    for j, n in enumerate(sizes):
        p = values[:, j][~np.isnan(values[:, j])] / scale
        spread = float(p.var(ddof=1)) if len(p) > 1 else 0.0
        if not n or spread == 0.0:
            out.append(math.nan)
            continue
        out.append(1.0 - float(np.mean(p * (1 - p) / n)) / spread)
    return tuple(out)


def distinguishable_rho(models: int, confidence: float = 0.95) -> float:
    """The smallest |rho| a correlation over `models` points tells apart from 0 (two-sided, the t
    test of a Pearson correlation); nan under 3 models."""
    from scipy.stats import t

    if models < 3:
        return math.nan
    q = float(t.ppf(1 - (1 - confidence) / 2, models - 2))
    return q / math.sqrt(models - 2 + q * q)


@dataclass(frozen=True)
class Analysis:
    """The correlation matrix of a population of models and the weak set at tau; each category's
    reliability (NaN: its size unknown) where the sizes are known."""

    method: str
    tau: float
    models: tuple[str, ...]
    categories: tuple[str, ...]
    matrix: np.ndarray
    counts: np.ndarray
    reliability: tuple[float, ...] = ()
    sizes: tuple[float | None, ...] = ()
    min_reliability: float | None = None  # categories less reliable than this are left out of L
    stability: dict | None = None  # soce.stability.Stability's dict, where the scores were redrawn

    @property
    def unsized(self) -> tuple[str, ...]:
        """Where the sizes of some categories only are known, the others: no reliability, no redraw
        and no analysis.min_reliability for them."""
        return tuple(c for c, n in zip(self.categories, self.sizes) if not n) if any(self.sizes) else ()

    def noisy(self) -> list[tuple[str, float, float]]:
        """(category, reliability, examples) of every category of L whose spread between models is
        mostly sampling noise: its correlations, and the expert it picks, rest on noise."""
        weak = set(self.weak_set)
        return [(c, r, n) for c, r, n in zip(self.categories, self.reliability, self.sizes) if c in weak and r < NOISY]

    @property
    def left_out(self) -> dict[str, str]:
        """The categories analysis.min_reliability leaves out of L, each with its figures."""
        if self.min_reliability is None:
            return {}
        return {c: f"reliability {reliability_text(r)} < analysis.min_reliability={self.min_reliability:g} ({n:.0f} examples): its spread "
                   "between models is mostly sampling noise" for c, r, n in zip(self.categories, self.reliability, self.sizes)
                if r < self.min_reliability}

    @property
    def entry_tau(self) -> dict[str, float]:
        """Per category, min |rho| with any other category: it is in L for every tau above this.

        NaN correlations (too few rows, constant column) never make a pair weak; a category left
        out (min_reliability) never enters L, nor makes another enter it.
        """
        out, left_out = {}, self.left_out
        kept = [b for b, c in enumerate(self.categories) if c not in left_out]
        for a, cat in enumerate(self.categories):
            others = [abs(self.matrix[a, b]) for b in kept if b != a and not math.isnan(self.matrix[a, b])]
            out[cat] = float(min(others)) if others and cat not in left_out else math.nan
        return out

    def weak_set_at(self, tau: float) -> tuple[str, ...]:
        return tuple(c for c, t in self.entry_tau.items() if t < tau)

    @property
    def weak_set(self) -> tuple[str, ...]:
        return self.weak_set_at(self.tau)

    def pairs(self) -> list[tuple[str, str, float]]:
        """Every pair of distinct categories with its correlation."""
        k = len(self.categories)
        return [(self.categories[a], self.categories[b], float(self.matrix[a, b])) for a in range(k) for b in range(a + 1, k)]

    @property
    def weak_pairs(self) -> list[tuple[str, str, float]]:
        return [(a, b, r) for a, b, r in self.pairs() if abs(r) < self.tau]

    @property
    def undefined_pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b, r in self.pairs() if math.isnan(r)]

    def undefined_reasons(self, values: np.ndarray) -> list[str]:
        """Why each undefined correlation is undefined, one sentence per cause: a category whose
        score is the same for every model (it correlates with nothing), or a pair of categories
        that fewer than 2 models (or only models with one score on either) have scores on both.
        `values`: the population's scores (models x categories) the matrix was computed from."""
        undefined = self.undefined_pairs
        constant = [c for i, c in enumerate(self.categories)
                    if len(set(v for v in values[:, i] if not math.isnan(v))) == 1]
        out = [f"{c!r} has the same score, {float(np.nanmax(values[:, self.categories.index(c)])):.4g}, for every model: it "
               "correlates with no category and never enters L" for c in constant]
        index = {c: i for i, c in enumerate(self.categories)}
        for a, b in undefined:
            if a in constant or b in constant:
                continue
            shared = int(self.counts[index[a], index[b]])
            why = (f"only {shared} model{'' if shared == 1 else 's'} {'has' if shared == 1 else 'have'} scores on both"
                   if shared < 2 else "one of them is the same for every model that scores both")
            out.append(f"the correlation of {a!r} and {b!r} is undefined: {why}")
        return out

    def tau_sweep(self, taus: Sequence[float]) -> list[dict]:
        return [{"tau": float(t), "weak_set": list(self.weak_set_at(t))} for t in taus]

    def to_dict(self, taus: Sequence[float] = ()) -> dict:
        return {
            "method": self.method,
            "tau": self.tau,
            "models": list(self.models),
            "categories": list(self.categories),
            "matrix": [[_json_float(v) for v in row] for row in self.matrix],
            "counts": self.counts.tolist(),
            "weak_pairs": [{"a": a, "b": b, "rho": r} for a, b, r in self.weak_pairs],
            "weak_set": list(self.weak_set),
            "entry_tau": {c: _json_float(t) for c, t in self.entry_tau.items()},
            "undefined_pairs": [list(p) for p in self.undefined_pairs],
            "tau_sweep": self.tau_sweep(taus),
            # the share shown (clipped at 0), and the formula's own value (below 0 where the noise is larger than the spread)
            "reliability": {c: _json_float(max(r, 0.0)) for c, r in zip(self.categories, self.reliability)},
            "reliability_raw": {c: _json_float(r) for c, r in zip(self.categories, self.reliability)},
            "sizes": dict(zip(self.categories, self.sizes)),
            "min_reliability": self.min_reliability,
            "left_out": self.left_out,
            **({"stability": self.stability} if self.stability else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Analysis":
        matrix = np.array([[math.nan if v is None else v for v in row] for row in d["matrix"]], dtype=np.float64)
        reliability = tuple(math.nan if r is None else r for r in d.get("reliability_raw", d.get("reliability", {})).values())
        return cls(d["method"], float(d["tau"]), tuple(d["models"]), tuple(d["categories"]), matrix, np.array(d["counts"]),
                   reliability, tuple(d.get("sizes", {}).values()), d.get("min_reliability"), d.get("stability"))


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def analyze(table: ScoreTable, tau: float, method: str = "pearson", sizes: dict[str, float] | None = None,
            min_reliability: float | None = None) -> Analysis:
    """Correlations between the categories of `table` across its models, and L at `tau`; with
    `sizes` (category -> its examples), each category's reliability, and L without the categories
    less reliable than `min_reliability`."""
    if not 0.0 <= tau <= 1.0:
        raise ConfigError(f"tau={tau} is outside [0, 1]")
    matrix, counts = correlation_matrix(table.values, method)
    n = tuple(sizes.get(c) for c in table.categories) if sizes else ()
    return Analysis(method, tau, table.models, table.categories, matrix, counts, reliability(table.values, n) if n else (), n,
                    min_reliability)


def cell_text(v: float, tau: float | None = None) -> str:
    """A correlation as written in its cell: 2 decimals, 3 where 2 would hide which side of tau it is."""
    if math.isnan(v):
        return "n/a"
    if tau is not None and abs(abs(v) - tau) < 0.01:
        return f"{v:.3f}"
    return f"{v:.2f}"


def draw_heatmap(ax, matrix: np.ndarray, labels: Sequence[str], tau: float | None = None):
    """A correlation matrix on `ax`: colours on [-1, 1], each value written in its cell."""
    k = len(labels)
    fontsize = 9 if k <= 12 else 7
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    for a in range(k):
        for b in range(k):
            v = matrix[a, b]
            ax.text(b, a, cell_text(v, tau), ha="center", va="center", fontsize=fontsize, color="white" if abs(v) > 0.6 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize + 1)
    ax.set_yticks(range(k), labels, fontsize=fontsize + 1)
    return image


def plot_correlation(analysis: Analysis, path: Path) -> None:
    """Heatmap of the matrix, values annotated, L's categories in bold red, weak pairs outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    k = len(analysis.categories)
    size = max(5.0, 0.62 * k + 2.5)
    fontsize = 9 if k <= 12 else 7
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = draw_heatmap(ax, analysis.matrix, analysis.categories, analysis.tau)
    for a in range(k):
        for b in range(k):
            if a != b and abs(analysis.matrix[a, b]) < analysis.tau:
                ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
    weak = set(analysis.weak_set)
    for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if label.get_text() in weak:
            label.set_fontweight("bold")
            label.set_color("firebrick")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"{analysis.method} correlation")
    ax.set_title(
        f"{analysis.method.capitalize()} correlation across {len(analysis.models)} models\n"
        f"weak set L at tau={analysis.tau:g} in bold red ({len(weak)} of {k}); pairs with |rho| < tau outlined",
        fontsize=fontsize + 2,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def entry_label(analysis: Analysis, category: str) -> str:
    """A category as entry_tau.png names it: with its reliability, whether it is left out, and its
    share of redraws in L, where the analysis has them."""
    reliable = dict(zip(analysis.categories, analysis.reliability))
    in_l = (analysis.stability or {}).get("in_weak_set", {})
    notes = ([f"reliability {reliability_text(reliable[category])}"] if not math.isnan(reliable.get(category, math.nan)) else []) \
        + (["left out"] if category in analysis.left_out else []) \
        + ([f"in L in {in_l[category]:.0%} of redraws"] if category in in_l else [])
    return category + (f" ({', '.join(notes)})" if notes else "")


def plot_entry_tau(analysis: Analysis, path: Path) -> None:
    """Each category's entry threshold as a dot; those left of the tau line form L."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = sorted(analysis.entry_tau.items(), key=lambda kv: (math.isnan(kv[1]), kv[1]))
    k = len(entries)
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.32 * k + 1.3)))
    for i, (_, t) in enumerate(entries):
        inside = t < analysis.tau
        ax.plot([0, 0 if math.isnan(t) else t], [i, i], color="lightgray", zorder=1)
        if not math.isnan(t):
            ax.scatter([t], [i], color="firebrick" if inside else "gray", zorder=2)
    ax.axvline(analysis.tau, color="firebrick", linestyle="--")
    ax.annotate(f"tau = {analysis.tau:g}", (analysis.tau, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                textcoords="offset points", ha="center", va="bottom", fontsize=8, color="firebrick")  # above the data, not on it
    labels = [entry_label(analysis, c) for c, _ in entries]
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.invert_yaxis()
    finite = [t for _, t in entries if not math.isnan(t)]
    ax.set_xlim(0, min(1.0, 1.15 * max([*finite, analysis.tau])))  # the thresholds' range, tau always in view
    ax.set_xlabel("entry threshold: min |rho| with any other category\n(in L for tau above it)")
    ax.set_title(f"Weak set L as tau varies ({len(analysis.weak_set)} of {k} in L at tau={analysis.tau:g})", fontsize=10, pad=14)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
