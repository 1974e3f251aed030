"""One plotting style for every figure and table of the paper.

:func:`apply_style` sets matplotlib's rcParams once; :func:`save_figure` writes a figure as PDF
and PNG under ``paper/figures`` and :func:`write_table` a table as CSV and LaTeX under
``paper/tables``, each file atomically. Radiographs are drawn by :func:`show_radiograph` only:
grey scale fixed to [0, 1] (bright = attenuating), square pixels, the array's first row at the
top and its first column at the left, so the radiological convention of the stored image
(patient's right on the image's left) is kept, never flipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: stages run headless

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from xrlib import stages  # noqa: E402
from xrlib.errors import ConfigError, DataError  # noqa: E402
from xrlib.io import atomic_path, write_csv_atomic, write_text_atomic  # noqa: E402

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
"""Colour-blind-safe palette (Okabe and Ito 2008); the colour cycle of every plot."""

SERIES_COLOURS = {
    "diffusionxray": OKABE_ITO[0],
    "bicubic_baseline": OKABE_ITO[1],
    "lq_input": "#7F7F7F",
    "real_xray": OKABE_ITO[7],
    "drr": OKABE_ITO[4],
    "ddpm": OKABE_ITO[2],
    "munit": OKABE_ITO[5],
    "restored_drr": OKABE_ITO[0],
    "published": OKABE_ITO[3],
}
"""One colour per method or image set, the same in every figure."""

FIGURE_WIDTH_IN = {"single": 3.5, "double": 7.2}
"""Column widths of a two-column paper, in inches."""

PNG_DPI = 200


def apply_style() -> None:
    """Set the compendium's rcParams (fonts, colours, vector-friendly PDF, grey images)."""
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": PNG_DPI,
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.02,
            "font.size": 8,
            "axes.titlesize": 8,
            "axes.labelsize": 8,
            "legend.fontsize": 7,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
            "axes.grid": False,
            "lines.linewidth": 1.2,
            "image.cmap": "gray",
            "image.interpolation": "nearest",
            "pdf.fonttype": 42,  # TrueType in PDF: editable text
            "ps.fonttype": 42,
            "svg.fonttype": "none",
        }
    )


def series_colour(name: str) -> str:
    """The fixed colour of a method or image set (a palette colour chosen by name otherwise)."""
    return SERIES_COLOURS.get(name, OKABE_ITO[sum(map(ord, name)) % len(OKABE_ITO)])


def figures_dir(root: Path | None = None) -> Path:
    """Where 08_figures writes the paper's figures (``paper/figures``, see :mod:`xrlib.stages`)."""
    return stages.path("08_figures.figures", root)


def tables_dir(root: Path | None = None) -> Path:
    """Where 08_figures writes the paper's tables (``paper/tables``)."""
    return stages.path("08_figures.tables", root)


def _check_name(name: str) -> str:
    if not name or Path(name).name != name or Path(name).suffix:
        raise ConfigError(f"figure/table name '{name}' must be a bare file stem like 'fig2_gallery' (no folder, no suffix)")
    return name


def save_figure(fig: plt.Figure, name: str, folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``fig`` as ``<name>.pdf`` and ``<name>.png`` (``PNG_DPI``) atomically; close it."""
    folder = Path(folder) if folder else figures_dir()
    paths = {}
    for fmt in ("pdf", "png"):
        path = folder / f"{_check_name(name)}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths[fmt] = path
    plt.close(fig)
    return paths


def write_table(
    frame: pd.DataFrame,
    name: str,
    folder: str | os.PathLike | None = None,
    float_format: str = "%.3f",
    caption: str | None = None,
) -> dict[str, Path]:
    """Write ``frame`` as ``<name>.csv`` (full precision) and ``<name>.tex`` (booktabs) atomically."""
    folder = Path(folder) if folder else tables_dir()
    name = _check_name(name)
    csv_path = write_csv_atomic(folder / f"{name}.csv", frame)
    latex = frame.to_latex(
        index=False, float_format=float_format, escape=True, na_rep="--", caption=caption, label=f"tab:{name}"
    )
    tex_path = write_text_atomic(folder / f"{name}.tex", latex)
    return {"csv": csv_path, "tex": tex_path}


def with_interval(mean: float, low: float, high: float, digits: int) -> str:
    """``mean [low, high]`` with ``digits`` decimals ("--" where the mean is missing)."""
    if pd.isna(mean):
        return "--"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def paper_quality_table(
    beside: pd.DataFrame, method_labels: Mapping[str, str], degradation_labels: Mapping[str, str]
) -> pd.DataFrame:
    """The paper's table for print, from :func:`xrlib.paper.beside_published`: ours with 95 % CIs beside the published values."""
    digits = {"psnr_db": 2, "ssim": 3, "ms_ssim": 3}
    names = {"psnr_db": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}
    table = pd.DataFrame({
        "Test set": beside["degradation"].map(lambda d: degradation_labels.get(d, d)),
        "Method": beside["method"].map(lambda m: method_labels.get(m, m)),
    })
    for metric, places in digits.items():
        if f"{metric}_ours" not in beside:
            continue
        published = beside[f"{metric}_published"]
        table[f"{names[metric]}, published"] = [("--" if pd.isna(v) else f"{v:.2f}") for v in published]  # as printed
        table[f"{names[metric]}, ours (95% CI)"] = [
            with_interval(r[f"{metric}_ours"], r[f"{metric}_ours_ci_low"], r[f"{metric}_ours_ci_high"], places)
            for _, r in beside.iterrows()
        ]
    return table


# ----------------------------------------------------------------------------------------------
# Radiographs and galleries
# ----------------------------------------------------------------------------------------------


def _as_display_2d(image: np.ndarray | torch.Tensor) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise DataError(f"a radiograph to show must be one 2-D image, got shape {np.shape(image)}")
    return array


def show_radiograph(ax: plt.Axes, image: np.ndarray | torch.Tensor, title: str | None = None, side_marker: bool = True) -> None:
    """Draw a display radiograph in [0, 1] as stored: grey, square pixels, no flips, no axes.

    ``side_marker`` writes "R" in the upper-left corner: the patient's right, where the
    radiological convention puts it.
    """
    array = _as_display_2d(image)
    ax.imshow(array, cmap="gray", vmin=0.0, vmax=1.0, aspect="equal", origin="upper", interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if side_marker:
        ax.text(0.03, 0.97, "R", transform=ax.transAxes, color="white", fontsize=7, fontweight="bold", va="top", ha="left")


def add_nodule_zoom(
    ax: plt.Axes,
    image: np.ndarray | torch.Tensor,
    bbox_rc: tuple[float, float, float, float],
    margin_fraction: float = 0.5,
    inset_bounds: tuple[float, float, float, float] = (0.62, 0.02, 0.36, 0.36),
    colour: str = "#E69F00",
    window: tuple[float, float] = (0.0, 1.0),
) -> plt.Axes:
    """Inset enlarging the region ``bbox_rc`` = (row0, col0, row1, col1), end-exclusive, plus a margin.

    The margin is ``margin_fraction`` of the box's longer side on every side, so one nodule
    zooms alike on grids of different resolution (a DRR and its enlarged restoration).

    The inset shows the same pixels with equal aspect in the grey ``window`` (default the main
    image's 0..1; :func:`zoom_window` stretches it to the zoomed pixels); a box marks the region on
    the main image. Returns the inset axes.
    """
    array = _as_display_2d(image)
    top, bottom, left, right = _zoom_limits(array.shape, bbox_rc, margin_fraction)
    inset = ax.inset_axes(inset_bounds)
    inset.imshow(array, cmap="gray", vmin=window[0], vmax=window[1], aspect="equal", origin="upper", interpolation="nearest")
    inset.set_xlim(left, right)
    inset.set_ylim(bottom, top)  # rows grow downwards, as in the main image
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
    ax.indicate_inset_zoom(inset, edgecolor=colour)
    return inset


def _zoom_limits(shape_hw: tuple[int, ...], bbox_rc: tuple[float, float, float, float], margin_fraction: float):
    """(top, bottom, left, right) pixel-edge limits of a nodule zoom: the box plus its margin, inside the image."""
    row0, col0, row1, col1 = bbox_rc
    if not (row1 > row0 and col1 > col0):
        raise DataError(f"nodule bbox {bbox_rc} is empty; expected (row0, col0, row1, col1) with row1 > row0, col1 > col0")
    margin_px = margin_fraction * max(row1 - row0, col1 - col0)
    return (max(row0 - margin_px, 0) - 0.5, min(row1 + margin_px, shape_hw[0]) - 0.5,
            max(col0 - margin_px, 0) - 0.5, min(col1 + margin_px, shape_hw[1]) - 0.5)


def zoom_window(images: Sequence[np.ndarray | torch.Tensor], bboxes: Sequence[tuple[float, float, float, float]],
                margin_fraction: float = 0.5, quantiles: tuple[float, float] = (0.01, 0.99),
                min_width: float = 0.02) -> tuple[float, float]:
    """One grey window for the nodule zooms of several images (a gallery row): from the lowest
    ``quantiles[0]`` to the highest ``quantiles[1]`` of the zoomed pixels, at least ``min_width`` wide
    and inside 0..1. A nodule in a dark lung (display values 0.00-0.05) is then visible in the
    insets, and the row's insets stay comparable with each other."""
    lows, highs = [], []
    for image, bbox in zip(images, bboxes, strict=True):
        array = _as_display_2d(image)
        top, bottom, left, right = _zoom_limits(array.shape, bbox, margin_fraction)
        region = array[int(top + 0.5):int(bottom + 0.5), int(left + 0.5):int(right + 0.5)]
        lows.append(np.quantile(region, quantiles[0]))
        highs.append(np.quantile(region, quantiles[1]))
    low, high = float(min(lows)), float(max(highs))
    if high - low < min_width:
        centre = min(max(0.5 * (low + high), 0.5 * min_width), 1.0 - 0.5 * min_width)
        low, high = centre - 0.5 * min_width, centre + 0.5 * min_width
    return max(low, 0.0), min(high, 1.0)


Box = tuple[float, float, float, float]


def image_grid(
    rows: Sequence[Sequence[np.ndarray | torch.Tensor]],
    column_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    bboxes: Sequence[Sequence[Box | None]] | None = None,
    width: str = "double",
) -> plt.Figure:
    """A gallery of radiographs, one row per case; ``bboxes[i][j]`` (or None) adds a nodule zoom to image (i, j).

    Each box is in its own image's pixels, so images of different sizes (a DRR and its enlarged
    restoration) keep their own coordinates. A row's zooms share one grey window stretched to their
    pixels (:func:`zoom_window`). Every image keeps square pixels; the figure's height
    follows the first image's aspect ratio.
    """
    if not rows or not rows[0]:
        raise DataError("image_grid needs at least one row with one image")
    n_rows, n_cols = len(rows), len(rows[0])
    if any(len(row) != n_cols for row in rows) or (bboxes is not None and [len(b) for b in bboxes] != [n_cols] * n_rows):
        raise DataError("every gallery row (and its row of boxes) must hold the same number of images")
    height, width_px = _as_display_2d(rows[0][0]).shape
    fig_width = FIGURE_WIDTH_IN[width]
    panel = fig_width / n_cols
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(fig_width, panel * height / width_px * n_rows + 0.3), squeeze=False)
    for i, row in enumerate(rows):
        boxes = bboxes[i] if bboxes is not None else [None] * n_cols
        zoomed = [(image, box) for image, box in zip(row, boxes) if box is not None]
        window = zoom_window(*zip(*zoomed)) if zoomed else None
        for j, (image, box) in enumerate(zip(row, boxes)):
            show_radiograph(axes[i, j], image, title=column_titles[j] if column_titles and i == 0 else None)
            if box is not None:
                add_nodule_zoom(axes[i, j], image, box, window=window)
    fig.subplots_adjust(wspace=0.02, hspace=0.06)
    for ax, title in zip(axes[:, 0], row_titles or []):
        _row_title(ax, title)
    return fig


def _row_title(ax: plt.Axes, title: str, min_fontsize: float = 6.0) -> None:
    """A vertical title left of a gallery row that spans no more than the row's height, so long case names
    do not run into the next row's: its font shrinks (not below ``min_fontsize``), and if that is not
    enough it breaks at its spaces and shrinks again."""
    text = ax.text(-0.04, 0.5, title, transform=ax.transAxes, rotation=90, ha="right", va="center", ma="center")
    renderer = ax.figure.canvas.get_renderer()
    row_height = ax.get_window_extent(renderer).height
    fontsize = text.get_fontsize()
    for candidate in dict.fromkeys([title, title.replace(" ", "\n")]):
        text.set_text(candidate)
        text.set_fontsize(fontsize)
        while text.get_window_extent(renderer).height > row_height and text.get_fontsize() > min_fontsize:
            text.set_fontsize(max(min_fontsize, text.get_fontsize() - 0.5))
        if text.get_window_extent(renderer).height <= row_height:
            return


# ----------------------------------------------------------------------------------------------
# Plots of numbers
# ----------------------------------------------------------------------------------------------


def legend_below(fig: plt.Figure, handles: Sequence, columns: int, row_height_in: float, **legend_kwargs) -> None:
    """One legend for the whole figure under its panels, and the panels laid out above it
    (``row_height_in`` inches per legend row, at most 40 % of the figure)."""
    fig.legend(handles=handles, loc="lower center", ncol=columns, frameon=False, **legend_kwargs)
    rows = -(-len(handles) // columns)
    fig.tight_layout(rect=(0, min(0.4, row_height_in * rows / fig.get_figheight()), 1, 1))


def metric_distributions(
    table: pd.DataFrame, metrics: Sequence[str], group: str, panel: str | None = None, labels: Mapping[str, str] | None = None
) -> plt.Figure:
    """Box plots with every point (jittered) of each metric per ``group`` value; one column per metric.

    With ``panel`` (e.g. degradation), one row of panels per value of that column. The groups are
    named once, in a legend below the panels (long method names would crowd each other as ticks).
    """
    labels = labels or {}
    panels = sorted(table[panel].unique()) if panel else [None]
    groups = list(dict.fromkeys(table[group]))
    fig, axes = plt.subplots(
        len(panels), len(metrics), figsize=(FIGURE_WIDTH_IN["double"], 2.0 * len(panels)), squeeze=False
    )
    rng = np.random.default_rng(0)  # jitter only: fixed so figures are reproducible
    for i, panel_value in enumerate(panels):
        subset = table if panel is None else table[table[panel] == panel_value]
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            values = [subset.loc[subset[group] == g, metric].dropna().to_numpy() for g in groups]
            boxes = ax.boxplot(values, positions=range(len(groups)), widths=0.5, showfliers=False, patch_artist=True,
                               medianprops={"color": "black"})
            for box, name in zip(boxes["boxes"], groups):
                box.set(facecolor=series_colour(name), alpha=0.25, edgecolor=series_colour(name))
            for k, (name, points) in enumerate(zip(groups, values)):
                ax.scatter(k + rng.uniform(-0.15, 0.15, points.size), points, s=6, color=series_colour(name), zorder=3)
            ax.set_xticks([])
            ax.set_ylabel(labels.get(metric, metric))
            if panel is not None:
                ax.set_title(labels.get(panel_value, panel_value))
    handles = [Patch(facecolor=series_colour(name), edgecolor=series_colour(name), label=labels.get(name, name)) for name in groups]
    columns = min(len(groups), 4 if sum(len(h.get_label()) for h in handles) <= 80 else 2)  # about a row's characters
    legend_below(fig, handles, columns, row_height_in=0.25)
    return fig


def spectra_plot(
    spectra: pd.DataFrame,
    ylabel: str = "power (intensity$^2$ px$^2$)",
    labels: Mapping[str, str] | None = None,
) -> plt.Figure:
    """Mean radial spectra of image sets on a log scale, with the 10-90 % band across images.

    ``spectra`` is long: set, frequency_cycles_per_px, power_mean, power_p10, power_p90
    (as :func:`xrlib.eval.realism.spectra_table` writes it).
    """
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN["single"], 2.4))
    for name, curve in spectra.groupby("set", sort=False):
        colour = series_colour(str(name))
        ax.plot(curve["frequency_cycles_per_px"], curve["power_mean"], color=colour, label=labels.get(name, name))
        ax.fill_between(curve["frequency_cycles_per_px"], curve["power_p10"], curve["power_p90"], color=colour, alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("spatial frequency (cycles/px)")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


CHOSEN_MARKERS = {"test_pairs": ("count for the test pairs (fidelity end)", "s"), "drrs": ("count for the DRRs", "*")}
"""How figure 10 marks the step counts 05 restored with (label, matplotlib marker)."""


def perception_distortion_plot(table: pd.DataFrame, labels: Mapping[str, str] | None = None,
                               chosen: Mapping[str, Mapping[str, int]] | None = None) -> plt.Figure:
    """SSIM and PSNR (distortion) against the spectrum distance to the HQ images (perception), one line per
    configuration through its step counts, each point labelled with its count (0: the LQ input).

    ``table``: config, steps, ssim, psnr_db, spectrum_distance (:func:`xrlib.models.restorer.perception_distortion`).
    ``chosen``: per configuration, the counts 05 restored with (``chosen_steps.json``: ``test_pairs``, ``drrs``),
    boxed (test pairs) and starred (DRRs). The ideal corner is top left: the HQ image's fine scale at full
    fidelity (Blau and Michaeli, CVPR 2018).
    """
    labels = labels or {}
    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH_IN["double"], 3.4))
    configs = list(dict.fromkeys(table["config"].astype(str)))
    fixed = {config: SERIES_COLOURS[config] for config in configs if config in SERIES_COLOURS}
    free = iter([colour for colour in OKABE_ITO if colour not in fixed.values()] * len(configs))
    colours = {config: fixed.get(config) or next(free) for config in configs}  # one distinct colour per configuration
    for ax, metric, name in zip(axes, ("ssim", "psnr_db"), ("SSIM", "PSNR (dB)")):
        for config, curve in table.sort_values("steps").groupby("config", sort=False):
            ax.plot(curve["spectrum_distance"], curve[metric], marker="o", ms=4, color=colours[str(config)],
                    label=labels.get(config, config))
            for row in curve.itertuples():  # even counts below their point, odd above: neighbours on a flat curve stay apart
                ax.annotate("input" if row.steps == 0 else f"{row.steps:g}", (row.spectrum_distance, getattr(row, metric)),
                            textcoords="offset points", xytext=(3, -10 if row.steps % 2 == 0 and row.steps else 3), fontsize=7)
            for use, (_, symbol) in CHOSEN_MARKERS.items():
                point = curve[curve["steps"] == (chosen or {}).get(str(config), {}).get(use)]
                ax.scatter(point["spectrum_distance"], point[metric], marker=symbol, s=110, facecolors="none",
                           edgecolors="black", linewidths=0.9, zorder=4)
        ax.set_xlabel("spectrum distance to HQ (decades)")
        ax.set_ylabel(f"{name}, validation pairs")
    handles = axes[0].get_lines()[:len(configs)]
    if chosen:
        handles += [plt.Line2D([], [], linestyle="none", marker=symbol, markersize=9, markerfacecolor="none",
                               markeredgecolor="black", label=label) for label, symbol in CHOSEN_MARKERS.values()]
    legend_below(fig, handles, 3, row_height_in=0.25, fontsize=7)  # below: the curves fill the panels
    return fig


def before_after_scatter(
    table: pd.DataFrame, before: str, after: str, flag: str | None = None, xlabel: str = "", ylabel: str = ""
) -> plt.Figure:
    """One point per row, ``before`` against ``after``, with the identity line; rows where ``flag`` is true in red."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN["single"], FIGURE_WIDTH_IN["single"]))
    values = table[[before, after]].to_numpy(dtype=float)
    finite = values[np.isfinite(values).all(axis=1)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#BBBBBB", linestyle="--", linewidth=0.8)
    flagged = table[flag].astype(bool).to_numpy() if flag else np.zeros(len(table), dtype=bool)
    ax.scatter(values[~flagged, 0], values[~flagged, 1], s=10, color=OKABE_ITO[0], label="kept")
    if flagged.any():
        ax.scatter(values[flagged, 0], values[flagged, 1], s=16, color=OKABE_ITO[1], marker="x", label=flag)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel or before)
    ax.set_ylabel(ylabel or after)
    ax.legend(frameon=False, loc="upper left")
    fig.tight_layout()
    return fig


def forest_plot(
    rows: pd.DataFrame, label: str, mean: str = "mean", ci_low: str = "ci_low", ci_high: str = "ci_high",
    published: str | None = None, xlabel: str = "", colour_by: str | None = None,
) -> plt.Figure:
    """Point estimates with their intervals, one line per row of ``rows`` (top to bottom).

    ``published`` names a column of published values, drawn as open diamonds beside ours.
    """
    longest_label = max(len(str(text)) for text in rows[label])  # long labels would squeeze the axis to a sliver
    width = min(FIGURE_WIDTH_IN["double"], max(FIGURE_WIDTH_IN["single"], 0.065 * longest_label + 2.0))
    fig, ax = plt.subplots(figsize=(width, 0.3 * len(rows) + 0.8))
    positions = np.arange(len(rows))[::-1]
    for y, (_, row) in zip(positions, rows.iterrows()):
        colour = series_colour(str(row[colour_by])) if colour_by else OKABE_ITO[0]
        ax.errorbar(row[mean], y, xerr=[[row[mean] - row[ci_low]], [row[ci_high] - row[mean]]], fmt="o", color=colour, ms=4, capsize=2)
        if published and pd.notna(row[published]):
            ax.plot(row[published], y, marker="D", mfc="none", color=series_colour("published"), ms=5, linestyle="none")
    ax.set_yticks(positions, list(rows[label]))
    ax.xaxis.set_major_locator(plt.MaxNLocator(nbins=5))
    ax.set_xlabel(xlabel)
    if published:
        ax.plot([], [], marker="D", mfc="none", color=series_colour("published"), linestyle="none", label="published")
        ax.plot([], [], marker="o", color=OKABE_ITO[0] if not colour_by else "#444444", linestyle="none", label="ours (95% CI)")
        ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)  # above the rows
    fig.tight_layout()
    return fig


def roc_plot(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    auc: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
) -> plt.Figure:
    """ROC curves (false-positive fraction, true-positive fraction) per reader or condition, with the chance line."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN["single"], FIGURE_WIDTH_IN["single"]))
    ax.plot([0, 1], [0, 1], color="#BBBBBB", linestyle="--", linewidth=0.8)
    for name, (fpf, tpf) in curves.items():
        shown = (labels or {}).get(name, name)
        label = f"{shown} (AUC {auc[name]:.2f})" if auc and name in auc else shown
        ax.plot(fpf, tpf, color=series_colour(name), label=label, drawstyle="default")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive fraction")
    ax.set_ylabel("true-positive fraction")
    ax.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    return fig
