"""The report's figures: Shapley values, consistency before and after souping, and the weight
landscape of a 3-expert sweep on the simplex."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from soce.analysis import draw_heatmap
from soce.report.consistency import Consistency
from soce.report.shapley import ShapleyResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_surrogate(fit: Sequence[dict], title: str, path: Path) -> None:
    """Each evaluated point's objective as the surrogate fitted without it predicts it (+-1 s.d.),
    against as measured on the examples it was evaluated on (+-1 s.d. of that measurement): the
    experts alone, the soups evaluated on every example, and those on a part of them. A
    prediction interval that runs past both ends of the plot (an expert alone, which the fit
    without it can only extrapolate to) is left out, and the plot says how many were."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    values = [v for f in fit for v in (f["measured"], f["predicted"])]
    lo, hi = (float(np.percentile(values, 2)), float(np.percentile(values, 98))) if values else (0.0, 1.0)
    pad = 0.15 * (hi - lo or 0.05)
    lo, hi = lo - pad, hi + pad
    kinds = ((lambda f: max(f["point"]) == 1.0, dict(marker="s", color="gray", label="an expert alone")),
             (lambda f: max(f["point"]) < 1.0 and f["whole"], dict(marker="o", color="steelblue", label="a soup, every example")),
             (lambda f: not f["whole"], dict(marker="o", color="lightsteelblue", mfc="white", label="a soup, part of them")))
    left_out = 0
    for keep, style in kinds:
        rows = [f for f in fit if keep(f)]
        if rows:
            sds = bars_within([f["predicted"] for f in rows], [f["sd"] for f in rows], lo, hi)
            left_out += sum(sd is None for sd in sds)
            ax.errorbar([f["measured"] for f in rows], [f["predicted"] for f in rows], xerr=[f["measured_sd"] for f in rows],
                        yerr=[0.0 if sd is None else sd for sd in sds], linestyle="none", capsize=2, elinewidth=0.8, **style)
    if values:
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="predicted = measured")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    if left_out:
        ax.text(0.02, 0.98, f"{left_out} prediction interval{'s' if left_out > 1 else ''} wider than the plot: not drawn",
                transform=ax.transAxes, va="top", fontsize=7, color="dimgray")
    ax.set_xlabel("measured (on the examples evaluated)")
    ax.set_ylabel("predicted without it (leave-one-out)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def bars_within(centres: Sequence[float], sds: Sequence[float], lo: float, hi: float) -> list[float | None]:
    """Each error bar's half-length, or None where centre +- sd runs past both ends of [lo, hi]: a
    line across the whole plot, which says only that the point is not predicted."""
    return [None if c - sd <= lo and c + sd >= hi else sd for c, sd in zip(centres, sds)]


def plot_shapley(players: Sequence[str], result: ShapleyResult, title: str, path: Path) -> None:
    """One horizontal bar per player, largest on top; Monte Carlo values with +-2 standard errors."""
    plt = _pyplot()
    order = sorted(range(len(players)), key=lambda i: result.values[i])
    fig, ax = plt.subplots(figsize=(7.5, max(2.6, 0.45 * len(players) + 1.4)))
    values = [result.values[i] for i in order]
    errors = [0.0] * len(order) if result.errors is None else [2 * result.errors[i] for i in order]
    ax.barh(range(len(order)), values, xerr=errors if result.errors else None,
            color=["firebrick" if v < 0 else "steelblue" for v in values], capsize=3)
    ax.set_yticks(range(len(order)), [players[i] for i in order], fontsize=9)
    lo = min(0.0, *(v - e for v, e in zip(values, errors)))
    hi = max(0.0, *(v + e for v, e in zip(values, errors)))
    pad = 0.22 * (hi - lo or 1.0)
    for y, (v, e) in enumerate(zip(values, errors)):  # the value beyond the end of its bar and error bar
        end = v + e if v >= 0 else v - e
        ax.text(end, y, f" {v:+.3f} ", va="center", ha="left" if v >= 0 else "right", fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(lo - (pad if lo < 0 else 0), hi + pad)
    how = "exact" if result.errors is None else f"Monte Carlo, {result.samples} permutations, bars +-2 s.e."
    ax.set_xlabel(f"Shapley value ({how})")
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_consistency(c: Consistency, path: Path) -> None:
    """The category correlation matrix over the candidates beside the one over the soups."""
    plt = _pyplot()
    k = len(c.categories)
    size = max(4.5, 0.6 * k + 2.3)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.2, size))
    for ax, matrix, what, n, mean in ((axes[0], c.candidates, "candidates", c.n_candidates, c.mean_candidates),
                                      (axes[1], c.soups, "soups of the sweep", c.n_soups, c.mean_soups)):
        image = draw_heatmap(ax, matrix, c.categories)
        ax.set_title(f"over {n} {what}\nmean off-diagonal correlation {mean:.3f}", fontsize=10)
    axes[1].tick_params(labelleft=False)  # the same categories as on the left
    fig.colorbar(image, ax=list(axes), fraction=0.025, pad=0.03, label="correlation between categories")
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_ternary(experts: Sequence[str], points: Sequence[Sequence[float]], scores: Sequence[float], label: str, path: Path,
                 alone: Sequence[float] | None = None, noise: float = 0.0) -> None:
    """A 3-expert sweep on the weight simplex: each corner is one expert alone (its own score,
    `alone`, as a square there); colour is the score, on one scale for soups and experts, its
    label giving `noise` (two standard errors of one score) beside the scale's span."""
    plt = _pyplot()
    w = np.asarray(points, dtype=float)
    x = w[:, 1] + 0.5 * w[:, 2]
    y = (math.sqrt(3) / 2) * w[:, 2]
    fig, ax = plt.subplots(figsize=(7.0, 6.4))
    corners = np.array([[0, 0], [1, 0], [0.5, math.sqrt(3) / 2], [0, 0]])
    ax.plot(corners[:, 0], corners[:, 1], color="black", linewidth=1)
    s = np.asarray(scores, dtype=float)
    both = np.concatenate([s, np.asarray(alone if alone is not None else [], dtype=float)])
    vmin, vmax = np.nanmin(both), np.nanmax(both)
    if len(points) >= 4 and np.linalg.matrix_rank(np.c_[x, y, np.ones_like(x)]) == 3:  # a surface needs non-collinear points
        ax.tricontourf(x, y, s, levels=12, cmap="viridis", alpha=0.35, vmin=vmin, vmax=vmax)
    dots = ax.scatter(x, y, c=s, cmap="viridis", s=70, edgecolors="black", linewidths=0.4, zorder=3, vmin=vmin, vmax=vmax)
    best = int(np.argmax(s))
    ax.scatter([x[best]], [y[best]], marker="*", s=380, color="gold", edgecolors="black", zorder=4,
               label=f"best soup {s[best]:.4f}: " + ", ".join(f"{e} {v:.2f}" for e, v in zip(experts, w[best])))
    if alone is not None:
        ax.scatter(corners[:3, 0], corners[:3, 1], c=list(alone), cmap="viridis", marker="s", s=150, edgecolors="black",
                   linewidths=1.2, zorder=4, vmin=vmin, vmax=vmax, clip_on=False)
        top = int(np.nanargmax(alone))
        if alone[top] > s[best]:
            ax.scatter([], [], marker="s", color="white", edgecolors="black",
                       label=f"{experts[top]} alone {alone[top]:.4f}, above every soup's score")
    for (cx, cy), name, ha, va in ((corners[0], experts[0], "center", "top"), (corners[1], experts[1], "center", "top"),
                                   (corners[2], experts[2], "center", "bottom")):
        score = "" if alone is None else f" ({alone[list(experts).index(name)]:.4f})"
        ax.text(cx, cy + (0.05 if va == "bottom" else -0.05), name + score, ha=ha, va=va, fontsize=10, fontweight="bold")
    if noise:
        label += f"\nthe scale spans {vmax - vmin:.3f}; one score's noise: +-{noise:.3f}"
    fig.colorbar(dots, ax=ax, fraction=0.04, pad=0.06, label=label)
    ax.set_xlim(-0.35, 1.35)
    ax.set_ylim(-0.15, 1.0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False)
    ax.set_title("Weight landscape: each point a soup, a corner one expert alone", fontsize=10)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_diagnostics(models: Sequence[str], cosines: np.ndarray | None, lines: Sequence, objective: str, path: Path,
                     experts: Sequence[str] = ()) -> None:
    """The task vectors' cosines (where a base is known; the experts' names in bold) beside the
    score along each pair's line (its legend beside the panel, never on the lines)."""
    plt = _pyplot()
    panels = (cosines is not None) + bool(lines)
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.8), squeeze=False, gridspec_kw={"wspace": 0.5})
    axes = list(axes[0])
    if cosines is not None:
        ax = axes.pop(0)
        image = draw_heatmap(ax, np.nan_to_num(cosines), list(models))
        for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
            if label.get_text() in experts:
                label.set_fontweight("bold")
        ax.set_title("cosine between task vectors\n(theta_i - theta_base; experts in bold)", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if lines:
        ax = axes.pop(0)
        for line in lines:
            ax.plot(line.ts, line.scores, marker="o", label=f"{line.a} -> {line.b} (barrier {line.barrier:.3f})")
            ax.plot([0, 1], [line.scores[0], line.scores[-1]], linestyle=":", color=ax.lines[-1].get_color(), linewidth=1)
        ax.set_xlabel("t (weight of the second model; the first has 1 - t)")
        ax.set_ylabel(f"dev {objective}")
        ax.set_title("score along the line between two experts\n(dotted: the straight line between the ends)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
