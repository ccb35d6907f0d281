"""Tables and figures for the book: one table formatter, one palette, one figure style.

Every table a study notebook displays or glues goes through :func:`table`, and every
figure starts from :func:`figure` (after :func:`style`), so the report reads the same on
every page:

- **Names.** Columns get readable names (:data:`COLUMN_LABELS`: ``jsd_mean`` → "JSD",
  ``wd_scaled_mean`` → "WD/(K−1)", ``truth_mode`` → "Truth"); truth modes read "full
  data" / "held-out".
- **Order.** Methods appear in the registry's order (:data:`METHOD_ORDER`: statistical
  methods, LLM methods, other reference names of the studies, the noise floor last).
- **Numbers.** Floats have 3 significant digits (:func:`format_number`); counts are
  integers with thousands separators; a headline mean carries its spread over seeds
  (:func:`seed_summary` then :func:`mean_sd`: "0.0912 ± 0.0031").
- **No raw values.** A missing value is "—" with a footnote, a boolean is yes/no, a path
  is its text; nothing is shown as a Python repr.
- **Length.** A table longer than ``max_rows`` shows its first rows and the rest in a
  collapsed ``<details>`` block; every table scrolls sideways inside the page column
  (``book/_static/report.css``: ``div.report-table``).
- **Colour.** One colour per method in every figure (:data:`METHOD_COLORS`).
- **Size.** The book's content column is about :data:`COLUMN_PX` pixels wide. A figure
  :data:`FIGURE_WIDTH` inches wide saved at :data:`FIGURE_DPI` fills it at its natural
  size, and :func:`style` sets fonts of at least :data:`MIN_FONT_PT` points, which is
  at least 12 px on the page (:func:`rendered_font_px`).
"""

from __future__ import annotations

import html
import math
import re
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import methods as method_registry
from .errors import DsaError

# --------------------------------------------------------------------------
# Names and order
# --------------------------------------------------------------------------

#: Reference names the studies use besides the registry's methods (ablations, theorem,
#: unseen backgrounds), in the order they are shown.
OTHER_REFERENCES = ("TS-drop", "MNL-drop", "Marginal", "QMean", "empirical", "empirical_smoothed", "no_shift",
                    "quantile_pair", "quantile_pooled", "ratio_pair", "ratio_pooled", "EB-MNL(marginal)",
                    "EB-MNL(crossfit)", "DSA-ratio", "ideal-P2(TS)", "ideal-P2(TKFT) DSA", "ideal-P2(TKFT) DSA-ratio",
                    "DSA (no guard)", "TKFT (paper)", "DSA (paper)")
#: Methods in display order: the registry's (statistical, then LLM), other references, the noise floor last.
METHOD_ORDER = (*method_registry.ALL, *OTHER_REFERENCES, "floor")

#: Readable column names. A column not listed keeps its name with underscores as spaces.
COLUMN_LABELS = {
    "method": "Method",
    "dataset": "Dataset",
    "question": "Question",
    "seed": "Seed",
    "seeds": "Seeds",
    "truth_mode": "Truth",
    "jsd": "JSD",
    "jsd_mean": "JSD",
    "jsd_wmean": "JSD (size-weighted)",
    "jsd_median": "JSD (median)",
    "jsd_se": "JSD s.e.",
    "wd": "WD",
    "wd_mean": "WD",
    "wd_wmean": "WD (size-weighted)",
    "wd_scaled": "WD/(K−1)",
    "wd_scaled_mean": "WD/(K−1)",
    "wd_scaled_wmean": "WD/(K−1) (size-weighted)",
    "ratio": "Ratio to TS",
    "ratio_sd": "Ratio to TS, s.d. over seeds",
    "share": "Share better than TS",
    "better": "Subgroups better than TS",
    "subgroups": "Subgroups",
    "respondents": "Respondents",
    "n": "n",
    "train_n": "Training respondents",
    "train_size": "Training size",
    "ts_equivalent_n": "TS-equivalent n",
    "saving": "Data saving",
    "seconds": "Seconds",
    "fit_seconds": "Fit seconds",
    "error": "Error",
    "seed_sd": "s.d. over seeds",
    "runs": "Runs",
    "model": "Model",
    "split": "Split",
    "size_bin": "Size bin",
    "presence": "In training sample",
    "code_dirty": "Uncommitted changes",
}
#: Readable values of the ``truth_mode`` column.
TRUTH_LABELS = {"full": "full data", "heldout": "held-out"}
#: What a missing cell shows; the table's footnote says why.
MISSING = "—"
SIGNIFICANT_DIGITS = 3


def column_label(name) -> str:
    """The readable name of a result column (:data:`COLUMN_LABELS`, else underscores become spaces)."""
    name = str(name)
    return COLUMN_LABELS.get(name, name.replace("_", " "))


def method_order(names: Iterable[str]) -> list[str]:
    """``names`` (unique) in display order: :data:`METHOD_ORDER` first, unknown names after, alphabetically."""
    names = list(dict.fromkeys(str(n) for n in names))
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    known = sorted((n for n in names if n in rank), key=rank.__getitem__)
    return known + sorted(n for n in names if n not in rank)


# --------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------


def _decimals(x: float, sig: int) -> int:
    """Decimal places that show ``x`` with ``sig`` significant digits (never negative)."""
    if x == 0 or not math.isfinite(x):
        return max(sig - 1, 0)
    return max(sig - 1 - math.floor(math.log10(abs(x))), 0)


def format_number(x, sig: int = SIGNIFICANT_DIGITS) -> str:
    """``x`` as text: floats with ``sig`` significant digits (no exponent; all digits of the integer part),
    integers with thousands separators, booleans as yes/no, missing as "—", negatives with a minus sign.

    >>> format_number(0.091234), format_number(43.2687), format_number(12345.6), format_number(1415)
    ('0.0912', '43.3', '12,346', '1,415')
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    x = float(x)
    if not math.isfinite(x):
        return "∞" if x > 0 else "−∞"
    text = f"{x:,.{_decimals(x, sig)}f}"
    if text.startswith("-"):
        text = text[1:] if float(text[1:].replace(",", "")) == 0 else "−" + text[1:]
    return text


def format_share(x) -> str:
    """A share in [0, 1] as a percentage with one decimal: 0.7591 → "75.9%", 1.0 → "100.0%"."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    return f"{100 * float(x):.1f}%".replace("-", "−")


def mean_sd(mean, sd, sig: int = SIGNIFICANT_DIGITS) -> str:
    """A mean with its spread, both to the mean's decimal places: (0.091234, 0.00311) → "0.0912 ± 0.0031".

    A spread too small for those places gets one significant digit (0.308, 0.00042 → "0.308 ± 0.0004");
    a missing ``sd`` (one seed) shows the mean alone; a missing mean shows "—".
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    m = format_number(float(mean), sig)
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return m
    d = _decimals(float(mean), sig)
    sd = abs(float(sd))
    if 0 < sd < 0.5 * 10 ** -d:  # the spread would read "± 0.000": show its first significant digit instead
        d = _decimals(sd, 1)
    return f"{m} ± {sd:.{d}f}"


def seed_summary(rows: pd.DataFrame, value: str | Sequence[str], by: Sequence[str] = ("truth_mode", "method"),
                 seed: str = "seed") -> pd.DataFrame:
    """Means over seeds, with the standard deviation over seeds, of tidy per-(question, seed, method) rows.

    Each seed's value is first averaged over everything else in its group (questions,
    datasets), so the spread is that of the seeds' means (``ddof=1``; ``NaN`` with one
    seed). Returns one row per ``by`` group with ``<value>``, ``<value>_sd`` and
    ``seeds`` (how many seeds).
    """
    values = [value] if isinstance(value, str) else list(value)
    by = list(by)
    missing = sorted(set(values + by + [seed]) - set(rows.columns))
    if missing:
        raise DsaError(f"seed_summary: the rows have no column(s) {missing}; they have {list(rows.columns)}")
    if rows.empty:
        raise DsaError("seed_summary: no rows to summarise")
    per_seed = rows.groupby(by + [seed], sort=False)[values].mean()
    g = per_seed.groupby(level=list(range(len(by))), sort=False)
    out = g.mean()
    for v in values:
        out[f"{v}_sd"] = g[v].std(ddof=1)
    out["seeds"] = g.size()
    out = out.reset_index()
    if "method" in by:
        rank = {m: i for i, m in enumerate(method_order(out["method"]))}
        out = out.sort_values([c for c in by if c != "method"] + ["method"],
                              key=lambda s: s.map(rank) if s.name == "method" else s, kind="stable")
    return out.reset_index(drop=True)


def method_table(rows: pd.DataFrame, metrics: Sequence[str] = ("jsd_mean", "wd_scaled_mean"),
                 by: str | None = "truth_mode", seed: str = "seed") -> pd.DataFrame:
    """The headline table: one row per method (display order), "mean ± s.d. over seeds" cells.

    Columns are ``<metric label>`` or, with ``by``, ``<metric label>, <by value>`` (e.g.
    "JSD, full data"), from tidy per-(question, seed, method) rows.
    """
    keys = ([by] if by else []) + ["method"]
    s = seed_summary(rows, list(metrics), by=keys, seed=seed)
    out = pd.DataFrame(index=pd.Index(method_order(s["method"]), name="Method"))
    groups = list(dict.fromkeys(s[by])) if by else [None]
    for g in groups:
        part = s[s[by] == g] if by else s
        for m in metrics:
            label = column_label(m) if g is None else f"{column_label(m)}, {TRUTH_LABELS.get(g, g) if by == 'truth_mode' else g}"
            cells = {r["method"]: mean_sd(r[m], r[f"{m}_sd"]) for _, r in part.iterrows()}
            out[label] = [cells.get(meth, MISSING) for meth in out.index]
    return out


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


class Table:
    """A formatted table: HTML for the notebook and the book (``_repr_html_``), plain text otherwise."""

    def __init__(self, frame: pd.DataFrame, html_text: str):
        self.frame = frame  # the displayed cells, all text
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.frame.to_string(index=False)


def _cell(value, column: str) -> tuple[str, bool]:
    """A cell's text, and whether it was missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return MISSING, True
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), False
    if isinstance(value, os.PathLike):
        return os.fspath(value), False
    if column == "truth_mode":
        return TRUTH_LABELS.get(value, str(value)), False
    if isinstance(value, numbers.Number):
        return format_number(value), False
    if isinstance(value, str):
        return value, False
    if isinstance(value, (list, tuple, set)):
        return ", ".join(_cell(v, column)[0] for v in value), False
    if isinstance(value, Mapping):  # a settings mapping: "DSA: guard no; DSA-ratio: guard no, operator ratio"
        sep = "; " if any(isinstance(v, Mapping) for v in value.values()) else ", "
        return sep.join(f"{k}: {_cell(v, column)[0]}" if isinstance(v, Mapping) else f"{k} {_cell(v, column)[0]}"
                        for k, v in value.items()) or "none", False
    return str(value), False


_NO_BREAK = re.compile(r"(?<=[\d%)]) (?=[±–-])|(?<=[±<>≤≥]) (?=[-−\d.])|(?<=\d) (?=%)")


def _no_break(text: str) -> str:
    """``text`` with no-break spaces inside number groups ("0.011 ± 0.002", "> 50%", "< 0.001")."""
    return _NO_BREAK.sub("\u00a0", text) if isinstance(text, str) else text


def table(df: pd.DataFrame, caption: str | None = None, notes: Sequence[str] = (), max_rows: int = 25,
          missing: str = "not available", index: bool | None = None, shares: Sequence[str] = ("share",)) -> Table:
    """Format ``df`` for the report (see the module docstring) and return a :class:`Table`.

    ``caption``: a bold line above; ``notes``: footnotes below; ``missing``: what "—"
    means in this table (footnoted only when a cell is missing); ``index``: show the
    index as the first column (default: when it is named); ``shares``: columns shown as
    percentages. Rows are put in method order when there is a ``method`` column.
    """
    if not isinstance(df, pd.DataFrame):
        raise DsaError(f"table() needs a pandas DataFrame, got {type(df).__name__}")
    if max_rows < 1:
        raise DsaError(f"max_rows must be at least 1, got {max_rows}")
    show_index = (df.index.name is not None or any(n is not None for n in df.index.names)) if index is None else index
    data = df.reset_index() if show_index else df.reset_index(drop=True)
    if "method" in data.columns:
        rank = {m: i for i, m in enumerate(method_order(data["method"].astype(str)))}
        data = data.sort_values("method", key=lambda s: s.astype(str).map(rank), kind="stable").reset_index(drop=True)
    any_missing = False
    cells = {}
    for col in data.columns:
        texts = []
        for v in data[col].tolist():
            if str(col) in shares and isinstance(v, numbers.Number) and not isinstance(v, bool):
                t, miss = format_share(v), bool(isinstance(v, float) and math.isnan(v))
            else:
                t, miss = _cell(v, str(col))
            any_missing |= miss
            texts.append(t)
        cells[column_label(col)] = texts
    shown = pd.DataFrame(cells)
    all_notes = list(notes) + ([f"{MISSING}: {missing}."] if any_missing else [])

    def _html(frame: pd.DataFrame) -> str:
        # cells may wrap to fit the book's column, but never inside a number: "0.011 ± 0.002", "> 50%"
        frame = frame.map(_no_break)
        return frame.to_html(index=False, escape=True, border=0, classes="report-table-grid")

    parts = ['<div class="report-table">']
    if caption:
        parts.append(f'<p class="report-table-caption"><strong>{html.escape(caption)}</strong></p>')
    if len(shown) > max_rows:
        parts.append(_html(shown.head(max_rows)))
        parts.append(f"<details><summary>All {len(shown):,} rows</summary>{_html(shown)}</details>")
    else:
        parts.append(_html(shown))
    for n in all_notes:
        parts.append(f'<p class="report-table-note">{html.escape(n)}</p>')
    parts.append("</div>")
    return Table(shown, "\n".join(parts))


# --------------------------------------------------------------------------
# Colours and figures
# --------------------------------------------------------------------------

#: Pixels of the book's content column at a 1400 px window (sphinx-book-theme).
COLUMN_PX = 750
#: Default figure width (inches) and resolution: 7.5 in at 100 dpi is one column wide.
FIGURE_WIDTH = 7.5
FIGURE_DPI = 100
#: Smallest font (points) of any text in a figure.
MIN_FONT_PT = 9.0


def _method_colors() -> dict[str, tuple]:
    import seaborn as sns

    tab = sns.color_palette("tab20", 20)
    dark = sns.color_palette("Dark2", 8)
    colors = {
        "TS": tab[14], "MNL": tab[0], "POLR": tab[18], "EB-MNL": tab[1],
        "Direct": tab[10], "PE": tab[11], "AAE": tab[8],
        "TKFT": tab[2], "EB-TKFT": tab[3], "DSA": tab[6], "EB-DSA": tab[7],
        "XQ": (0.35, 0.20, 0.60), "EB-XQ": (0.65, 0.55, 0.85), "XQ-TKFT": (0.10, 0.60, 0.60),
        "TS-drop": tab[15], "MNL-drop": tab[19], "Marginal": tab[16], "QMean": tab[17],
        "empirical": tab[4], "empirical_smoothed": tab[5], "no_shift": tab[9],
        "quantile_pair": tab[12], "quantile_pooled": tab[13], "ratio_pair": dark[0], "ratio_pooled": dark[3],
        "Stacked-MNL": dark[1], "EB-MNL(marginal)": dark[2], "EB-MNL(crossfit)": dark[5],
        "DSA-ratio": dark[4], "ideal-P2(TS)": dark[6], "ideal-P2(TKFT) DSA": dark[7], "ideal-P2(TKFT) DSA-ratio": (0.55, 0.35, 0.15),
        # the paper-regime study's variants: DSA's hues, the paper's setting in TKFT's/DSA's darker shades
        "DSA (no guard)": (0.80, 0.40, 0.55), "TKFT (paper)": (0.10, 0.45, 0.10),
        "DSA (paper)": (0.55, 0.10, 0.10),
        "floor": (0.0, 0.0, 0.0),
    }
    return {m: tuple(float(c) for c in colors[m]) for m in METHOD_ORDER}


#: One colour per method name, the same in every figure (keys: :data:`METHOD_ORDER`).
METHOD_COLORS: dict[str, tuple] = _method_colors()


def method_color(name: str) -> tuple:
    """The colour of method ``name``; an unknown name is an error (add it to :data:`OTHER_REFERENCES`)."""
    if name not in METHOD_COLORS:
        raise DsaError(f"no colour for method {name!r}; known names are {', '.join(METHOD_ORDER)} "
                       f"(add a new reference name to dsalib.report.OTHER_REFERENCES and METHOD_COLORS)")
    return METHOD_COLORS[name]


def rendered_font_px(font_pt: float, width_in: float = FIGURE_WIDTH, dpi: float = FIGURE_DPI,
                     column_px: float = COLUMN_PX) -> float:
    """Height in page pixels of a ``font_pt`` font in a figure ``width_in`` inches wide saved at ``dpi``.

    The book shows an image at its natural size, shrunk to the column when wider.
    """
    natural = width_in * dpi
    return font_pt * dpi / 72 * min(1.0, column_px / natural)


def style(font_pt: float = 11.0) -> None:
    """The report's matplotlib/seaborn style: white grid, fonts of ``font_pt`` (ticks and legend one point less)."""
    import matplotlib as mpl
    import seaborn as sns

    small = font_pt - 1
    if small < MIN_FONT_PT:
        raise DsaError(f"font_pt {font_pt} gives tick labels below {MIN_FONT_PT} pt; use at least {MIN_FONT_PT + 1}")
    sns.set_theme(style="whitegrid", rc={
        "font.size": font_pt, "axes.titlesize": font_pt, "axes.labelsize": font_pt,
        "xtick.labelsize": small, "ytick.labelsize": small, "legend.fontsize": small,
        "legend.title_fontsize": small, "figure.titlesize": font_pt + 1,
        "figure.dpi": FIGURE_DPI, "savefig.dpi": FIGURE_DPI,
    })
    mpl.rcParams["figure.constrained_layout.use"] = True


def figure(nrows: int = 1, ncols: int = 1, width: float = FIGURE_WIDTH, height: float | None = None, **kwargs):
    """A new figure one book column wide (``plt.subplots`` with constrained layout); returns ``(fig, axes)``.

    ``height`` defaults to 0.6 × width for one row of panels and 0.45 × width per row otherwise.
    """
    import matplotlib.pyplot as plt

    if width * FIGURE_DPI < 500:
        raise DsaError(f"figure width {width} in is {width * FIGURE_DPI:.0f} px; the book needs at least 500 px")
    if height is None:
        height = width * 0.6 if nrows == 1 else width * 0.45 * nrows
    kwargs.setdefault("layout", "constrained")
    kwargs.setdefault("squeeze", False)
    return plt.subplots(nrows, ncols, figsize=(width, height), dpi=FIGURE_DPI, **kwargs)


def legend_outside(fig_or_ax, where: str = "right", handles: Sequence | None = None,
                   labels: Sequence[str] | None = None, **kwargs):
    """One legend outside the data: right of the axes (``where="right"``) or below the figure (``"below"``).

    With a figure, the handles of all its axes are merged (duplicates dropped); ``handles`` and
    ``labels`` replace them (e.g. :func:`marker_handle` for a marker that stands for a dataset).
    """
    import matplotlib.figure

    if where not in ("right", "below"):
        raise DsaError(f"legend_outside: where must be 'right' or 'below', got {where!r}")
    axes = fig_or_ax.axes if isinstance(fig_or_ax, matplotlib.figure.Figure) else [fig_or_ax]
    given = handles is not None
    handles, labels = (list(handles), list(labels or [])) if given else ([], [])
    if given and len(handles) != len(labels):
        raise DsaError(f"legend_outside: {len(handles)} handles but {len(labels)} labels")
    for ax in axes:
        if not given:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels and not lab.startswith("_"):
                    handles.append(h)
                    labels.append(lab)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not handles:
        return None
    if isinstance(fig_or_ax, matplotlib.figure.Figure):
        for old in list(fig_or_ax.legends):  # one legend per figure: a new call replaces it
            old.remove()
        loc = "outside right center" if where == "right" else "outside lower center"
        kwargs.setdefault("ncol", 1 if where == "right" else min(len(labels), 3))
        return fig_or_ax.legend(handles, labels, loc=loc, frameon=False, **kwargs)
    if where == "right":
        return fig_or_ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, **kwargs)
    return fig_or_ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.15),
                            ncol=min(len(labels), 4), frameon=False, **kwargs)


def saved_width_px(fig) -> float:
    """Width in pixels of ``fig`` as the notebook shows it (tight bounding box at the figure's dpi)."""
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    return float(box.width * fig.dpi)


def check_fits_column(fig, column_px: float = COLUMN_PX, slack: float = 1.05) -> float:
    """Raise when ``fig`` (with its legends) is wider than the book's column, so the page would shrink its
    fonts below :data:`MIN_FONT_PT`; returns the width in pixels."""
    width = saved_width_px(fig)
    if width > column_px * slack:
        raise DsaError(f"the figure is {width:.0f} px wide with its legend; the book column is {column_px:.0f} px, "
                       f"so its text would shrink by {column_px / width:.2f}: narrow the figure or the legend "
                       f"(fewer columns, shorter labels)")
    return width


def marker_handle(marker: str, filled: bool = True, color="0.45"):
    """A legend entry for a marker shape alone (grey, or hollow), for markers that stand for datasets or sources."""
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="", marker=marker, ms=7, markeredgecolor="black",
                  markerfacecolor=color if filled else "none")


def method_points(ax, summary: pd.DataFrame, value: str, sd: str | None = None, method: str = "method",
                  xlabel: str | None = None, reference: float | None = None, reference_label: str | None = None):
    """One point per method (display order, top to bottom) with a ± ``sd`` error bar, in the method's colour.

    ``summary``: one row per method (e.g. :func:`seed_summary`); ``reference``: a vertical line
    (e.g. 1 for a ratio to TS), labelled ``reference_label``.
    """
    order = method_order(summary[method])
    if summary[method].duplicated().any():
        raise DsaError("method_points: one row per method is needed; filter the summary first")
    rows = summary.set_index(method).loc[order]
    y = np.arange(len(order))[::-1]
    for yi, (m, r) in zip(y, rows.iterrows()):
        err = None if sd is None or pd.isna(r[sd]) else r[sd]
        ax.errorbar(r[value], yi, xerr=err, fmt="o", color=method_color(m), ms=7, capsize=3)
    ax.set_yticks(y, order)
    ax.set_xlabel(xlabel or column_label(value))
    if reference is not None:
        ax.axvline(reference, color="0.3", lw=1, ls="--", label=reference_label)
    return ax


def option_bars(ax, distributions: Mapping[str, Sequence[float]], option_labels: Sequence[str],
                xlabel: str = "answer option", ylabel: str = "share of respondents"):
    """Per-option distributions as grouped bars on a categorical x axis (one bar per series, one group per option).

    ``distributions``: name → probabilities (one per option). A name that is a method gets its
    colour; ``"truth"`` is drawn black and hatched; anything else in order from the grey ramp.
    """
    k = len(option_labels)
    bad = {n: len(p) for n, p in distributions.items() if len(p) != k}
    if bad:
        raise DsaError(f"option_bars: every distribution needs {k} values (one per option); got {bad}")
    names = list(distributions)
    width = 0.8 / max(len(names), 1)
    x = np.arange(k)
    for i, name in enumerate(names):
        if name == "truth":
            kw = {"color": "white", "edgecolor": "black", "hatch": "///"}
        elif name in METHOD_COLORS:
            kw = {"color": METHOD_COLORS[name]}
        else:
            kw = {"color": str(0.3 + 0.5 * i / max(len(names), 1))}
        ax.bar(x - 0.4 + width * (i + 0.5), np.asarray(distributions[name], float), width=width, label=name, **kw)
    ax.set_xticks(x, [str(o) for o in option_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.6, k - 0.4)
    return ax


# --------------------------------------------------------------------------
# Findings as sentences
# --------------------------------------------------------------------------

#: How each Phase 2 outcome (:data:`dsalib.llm_methods.PHASE2_OUTCOMES`) reads in a sentence.
PHASE2_OUTCOME_TEXT = {"run": "ran and was kept", "rejected": "was rejected by the validation guard",
                       "skipped": "was skipped (no pair of training subgroups reached the pair threshold)"}


def phase2_sentence(outcomes: Sequence[str], method: str = "DSA") -> str:
    """What happened to Phase 2 over a method's fits, in words: "Phase 2 of `DSA` ran and was kept in 1 of 3 fits; ..."

    A rejected or skipped Phase 2 leaves the Phase 1 model, so that fit of DSA is a TKFT fit.
    """
    outcomes = [str(o) for o in outcomes]
    if not outcomes:
        raise DsaError(f"phase2_sentence: no {method} fits to describe")
    unknown = sorted(set(outcomes) - set(PHASE2_OUTCOME_TEXT))
    if unknown:
        raise DsaError(f"phase2_sentence: unknown Phase 2 outcome(s) {unknown}; known: {list(PHASE2_OUTCOME_TEXT)}")
    total = len(outcomes)
    parts = [f"{PHASE2_OUTCOME_TEXT[o]} in {outcomes.count(o)} of {total} fit{'s' if total > 1 else ''}"
             for o in PHASE2_OUTCOME_TEXT if o in outcomes]
    text = f"Phase 2 of `{method}` " + "; ".join(parts) + "."
    if "run" not in outcomes:
        text += f" Every `{method}` fit here is therefore its Phase 1 (TKFT) model."
    return text


def plain(text: str) -> str:
    """``text`` for a glued sentence: the book shows glued text as is, so Markdown code marks (backticks) go."""
    return str(text).replace("`", "")


def versus(a: str, a_value: float, b: str, b_value: float, what: str = "JSD") -> str:
    """One comparison in words: "`DSA` 0.0912 against `MNL` 0.0800 (JSD): 14.0% higher"; lower is better."""
    for name, v in ((a, a_value), (b, b_value)):
        if v is None or not math.isfinite(float(v)):
            raise DsaError(f"versus: no finite value for {name!r} ({v!r}); is the method in the results?")
    a_value, b_value = float(a_value), float(b_value)
    if b_value == 0:
        rel = "level" if a_value == 0 else "higher"
    else:
        change = a_value / b_value - 1
        rel = "level" if abs(change) < 0.0005 else f"{format_share(abs(change))} {'higher' if change > 0 else 'lower'}"
    return f"`{a}` {format_number(a_value)} against `{b}` {format_number(b_value)} ({what}): {rel}"


def nice_log_ticks(values: Iterable[float], steps: Sequence[float] = (1, 1.5, 2, 3, 5, 7)) -> list[float]:
    """Round tick values (1, 1.5, 2, 3, 5, 7 times a power of ten) spanning the positive ``values``.

    Non-positive and missing values are ignored (a log axis cannot show them). The ticks run from the
    largest nice value at or below the smallest value to the smallest at or above the largest, so there
    are always at least two. Raises :class:`DsaError` when no value is positive.
    """
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        raise DsaError("nice_log_ticks: no positive value to put on a log axis")
    lo, hi = float(v.min()), float(v.max())
    grid = sorted({round(s * 10.0 ** k, 12) for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 2)
                   for s in steps})
    below = [g for g in grid if g <= lo * (1 + 1e-12)]
    above = [g for g in grid if g >= hi * (1 - 1e-12)]
    start, stop = (below[-1] if below else grid[0]), (above[0] if above else grid[-1])
    ticks = [g for g in grid if start <= g <= stop]
    return ticks if len(ticks) >= 2 else [start, next(g for g in grid if g > start)]


def log_axis(ax, ticks: Sequence[float], which: str = "x", max_ticks: int = 8, min_gap: float = 0.09):
    """A log-scale axis labelled at ``ticks`` in plain numbers ("200", "1,000"; not "2×10²"), no minor labels.

    With more than ``max_ticks`` values every second (third, ...) is labelled, always keeping the last.
    A label closer than ``min_gap`` of the axis' log span to the previous one is dropped (the last
    label is kept and its neighbour dropped), so labels such as "800" and "1,000" never overlap.
    """
    from matplotlib.ticker import NullFormatter, NullLocator

    if which not in ("x", "y"):
        raise DsaError(f"log_axis: which must be 'x' or 'y', got {which!r}")
    ticks = sorted({float(t) for t in ticks})
    if not ticks or ticks[0] <= 0:
        raise DsaError(f"log_axis: ticks must be positive numbers, got {ticks}")
    step = max(1, math.ceil(len(ticks) / max_ticks))
    shown = ticks[::step] if ticks[::step][-1] == ticks[-1] else ticks[::step] + [ticks[-1]]
    span = math.log10(shown[-1] / shown[0]) if len(shown) > 1 else 0.0
    if span > 0:
        kept = [shown[-1]]
        for t in reversed(shown[:-1]):  # from the last label down, so the last one always stays
            if math.log10(kept[-1] / t) >= min_gap * span:
                kept.append(t)
        shown = kept[::-1]
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    (ax.set_xticks if which == "x" else ax.set_yticks)(shown, [format_number(int(t)) if t == int(t) else f"{t:g}"
                                                               for t in shown])
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
    return ax
