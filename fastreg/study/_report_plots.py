"""The report's figures, drawn with matplotlib's Agg canvas (object API: no pyplot, no global
backend switch), imported only when a figure is drawn.

Shared axes are the point: every panel of a figure gets the SAME y-limits, computed once by
:func:`shared_limits` from every finite value drawn in the figure, so a curve that sits higher is
worse (or better) in fact, not because its panel was scaled differently.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

#: matplotlib's tab10, fixed here so colours do not depend on the user's rcParams.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
_LOG_SPAN = 10.0          # a positive error/loss quantity spanning >= 10x is drawn on a log axis
_PAD = 0.05               # fraction of the (log-)range added above and below
_MAX_GRID_TICKS = 6       # a strength grid this small gets one labelled tick per value


def load_matplotlib():
    """(Figure, FigureCanvasAgg) or None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _finite(values) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def use_log_scale(series, allowed: bool) -> bool:
    """A log y-axis when allowed (losses, errors) and every value is > 0 and max/min >= 10."""
    vals = [v for s in series for v in _finite(s)]
    if not allowed or not vals or min(vals) <= 0:
        return False
    return max(vals) / min(vals) >= _LOG_SPAN


def shared_limits(series, log: bool = False) -> tuple[float, float] | None:
    """(low, high) covering every finite value of every series, padded by 5 % of the range
    (of log10 of the range on a log axis); None when nothing is finite.

    A flat range (max == min) is widened to ±5 % of the value (±0.5 at 0)."""
    vals = [v for s in series for v in _finite(s)]
    if log:
        vals = [math.log10(v) for v in vals if v > 0]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    if hi == lo:
        half = abs(lo) * _PAD if lo != 0 else 0.5
        lo, hi = lo - half, hi + half
    else:
        pad = (hi - lo) * _PAD
        lo, hi = lo - pad, hi + pad
    if log:
        return 10.0 ** lo, 10.0 ** hi
    return lo, hi


@dataclass
class Curve:
    """One run's pair of curves in a panel: train (dashed) and validation (solid)."""
    train: list
    valid: list
    color: str
    label: str = ""
    best_epoch: int | None = None          # 1-based; marked with a dot on the validation curve
    stop_epoch: int | None = None          # the epoch an early stop ended the run (vertical line)


@dataclass
class Panel:
    title: str
    curves: list                            # Curve
    faint: list = field(default_factory=list)   # validation-only curves drawn in light grey
    faint_label: str = ""


def curve_figure(panels: list, ylabel: str, train_label: str, valid_label: str,
                 log_allowed: bool, title: str):
    """One figure, one panel per entry, every panel with the same x and y limits."""
    Figure, FigureCanvasAgg = load_matplotlib()
    from matplotlib.ticker import MaxNLocator
    series = []
    max_epoch = 1
    for p in panels:
        for c in p.curves:
            series += [c.train, c.valid]
            max_epoch = max(max_epoch, len(c.train), len(c.valid))
        for f in p.faint:
            series.append(f)
            max_epoch = max(max_epoch, len(f))
    log = use_log_scale(series, log_allowed)
    ylim = shared_limits(series, log)
    ncols = min(4, len(panels)) or 1
    nrows = -(-len(panels) // ncols) or 1
    single = len(panels) == 1
    fig = Figure(figsize=(8.0, 4.6) if single else (3.4 * ncols, 2.9 * nrows + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for ax, p in zip(flat, panels):
        for f in p.faint:
            ax.plot(range(1, len(f) + 1), f, color="#c8c8c8", lw=0.9, zorder=1)
        for c in p.curves:
            ax.plot(range(1, len(c.train) + 1), c.train, color=c.color, ls="--", lw=1.2,
                    zorder=2)
            ax.plot(range(1, len(c.valid) + 1), c.valid, color=c.color, ls="-", lw=1.6,
                    zorder=3, label=c.label or None)
            if c.best_epoch is not None and 1 <= c.best_epoch <= len(c.valid):
                ax.plot([c.best_epoch], [c.valid[c.best_epoch - 1]], "o", color=c.color,
                        ms=5, zorder=4)
            if c.stop_epoch is not None:
                ax.axvline(c.stop_epoch, color=c.color, ls=":", lw=1.0, zorder=1)
        ax.set_title(p.title, fontsize=8, y=1.01)    # a fixed y: no per-draw title layout
        ax.tick_params(labelsize=7)
        ax.grid(True, color="#eeeeee", lw=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if single and any(c.label for c in p.curves):
            ax.legend(fontsize=7, loc="best", title="validation", title_fontsize=7)
    if log:
        flat[0].set_yscale("log")
        _log_ticks(flat[0].yaxis, *ylim)
    if ylim is not None:
        for ax in flat:
            ax.set_ylim(*ylim)
    flat[0].set_xlim(0.5, max_epoch + 0.5)
    for row in axes:
        row[0].set_ylabel(ylabel, fontsize=8)
    for col in range(ncols):              # the lowest visible panel of each column: x labels
        low = max(r for r in range(nrows) if r * ncols + col < len(panels))
        axes[low][col].xaxis.set_tick_params(labelbottom=True)
        axes[low][col].set_xlabel("epoch", fontsize=8)
    _key(fig, train_label, valid_label, panels)
    fig.suptitle(title, fontsize=10)
    _layout(fig, nrows, ncols)
    return fig


def _key(fig, train_label, valid_label, panels):
    """One legend for the line styles, below the panels."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color="#333333", ls="--", lw=1.2, label=train_label),
               Line2D([], [], color="#333333", ls="-", lw=1.6, label=valid_label),
               Line2D([], [], color="#333333", ls="none", marker="o", ms=5,
                      label="best epoch (by validation)")]
    if any(c.stop_epoch is not None for p in panels for c in p.curves):
        handles.append(Line2D([], [], color="#333333", ls=":", lw=1.0, label="early stop"))
    faint = next((p.faint_label for p in panels if p.faint and p.faint_label), "")
    if faint:
        handles.append(Line2D([], [], color="#c8c8c8", lw=0.9, label=faint))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
               frameon=False)


@dataclass
class StrengthPanel:
    """Scores of one technique against its strength, mean ± std over seeds per value."""
    technique: str
    name: str                       # the parameter (l2, dropout, patience, ...)
    x: list
    valid_mean: list
    valid_std: list
    test_mean: list
    test_std: list
    chosen: float | None = None
    log_x: bool = False


def strength_figure(panels: list, metric_label: str, title: str, per_trial: bool = False):
    """One panel per technique; shared y (the metric), each panel its own x (λ, p, patience).

    ``per_trial``: the points are single trials (a search's parameter against its score), drawn
    unconnected, the chosen trial's value marked."""
    Figure, FigureCanvasAgg = load_matplotlib()
    from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator, NullLocator
    series = []
    for p in panels:
        series.append([m - (s or 0.0) for m, s in zip(p.valid_mean, p.valid_std)])
        series.append([m + (s or 0.0) for m, s in zip(p.valid_mean, p.valid_std)])
        series.append([m - (s or 0.0) for m, s in zip(p.test_mean, p.test_std)])
        series.append([m + (s or 0.0) for m, s in zip(p.test_mean, p.test_std)])
    ylim = shared_limits(series, False)
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.7 * nrows + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for ax, p in zip(flat, panels):
        if per_trial:
            ax.plot(p.x, p.valid_mean, "o", color=COLORS[0], ms=4, alpha=0.8)
            ax.plot(p.x, p.test_mean, "s", color=COLORS[1], ms=3, alpha=0.6)
        else:
            ax.errorbar(p.x, p.valid_mean, yerr=[s or 0.0 for s in p.valid_std],
                        color=COLORS[0], marker="o", ms=4, lw=1.4, capsize=2)
            ax.errorbar(p.x, p.test_mean, yerr=[s or 0.0 for s in p.test_std],
                        color=COLORS[1], marker="s", ms=4, lw=1.2, ls="--", capsize=2)
        if p.chosen is not None:
            ax.axvline(p.chosen, color="#555555", ls=":", lw=1.0)
        if p.log_x:
            ax.set_xscale("log")
        if not per_trial and len(p.x) <= _MAX_GRID_TICKS:   # a small grid: labelled ticks
            ax.xaxis.set_major_locator(FixedLocator(p.x))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FixedFormatter([f"{x:.3g}" for x in p.x]))
        elif p.log_x:
            _log_ticks(ax.xaxis, min(p.x), max(p.x))
        elif all(float(x).is_integer() for x in p.x):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(p.technique, fontsize=9, y=1.01)
        ax.set_xlabel(p.name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, color="#eeeeee", lw=0.6)
    if ylim is not None:
        flat[0].set_ylim(*ylim)
    for row in axes:
        row[0].set_ylabel(metric_label, fontsize=8)
    from matplotlib.lines import Line2D
    each = "one point per trial" if per_trial else "mean ± std over seeds"
    handles = [Line2D([], [], color=COLORS[0], marker="o", ms=4,
                      ls="none" if per_trial else "-", lw=1.4, label=f"validation ({each})"),
               Line2D([], [], color=COLORS[1], marker="s", ms=4,
                      ls="none" if per_trial else "--", lw=1.2, label=f"test ({each})"),
               Line2D([], [], color="#555555", ls=":", lw=1.0,
                      label=("the chosen trial" if per_trial else "chosen strength")
                      + " (by validation)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    _layout(fig, nrows, ncols, wspace=0.12)
    return fig


def _log_ticks(axis, lo: float, hi: float) -> None:
    """Labelled ticks at 1, 2, 5 x 10^k over at most 2 decades (readable over less than one),
    at powers of 10 (at most 6 of them) over more; no minor ticks: far fewer tick artists
    (matplotlib's minor log ticks dominate the drawing time)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0,)
    axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=7))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def _layout(fig, nrows: int, ncols: int, wspace: float = 0.08) -> None:
    """Fixed margins in inches (tight_layout measures every text: slow, and not needed for
    panels of a known shape): room for the title above, the key below, the y label left."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / w, right=1 - 0.2 / w, top=1 - 0.75 / h,
                        bottom=0.95 / h, wspace=wspace if ncols > 1 else 0.2,
                        hspace=0.55 if nrows > 1 else 0.2)


def axes_ylims(fig) -> list[tuple[float, float]]:
    """The y-limits of every visible axes of a figure (what the tests check for sharing)."""
    return [tuple(ax.get_ylim()) for ax in fig.axes if ax.get_visible()]


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; no software/time metadata, so equal figures give equal bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, metadata={"Software": None})
    return buf.getvalue()
