"""Figures are written as PDF + PNG, radiographs are shown undistorted, tables round-trip."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xrlib import figures
from xrlib.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def style():
    figures.apply_style()
    yield
    plt.close("all")


def marked_radiograph(height=40, width=80) -> np.ndarray:
    """Dark image, non-square, with a bright block in its upper-left corner (the patient's right)."""
    image = np.full((height, width), 0.1)
    image[:10, :10] = 0.9
    return image


def rendered_axes(fig: plt.Figure, ax: plt.Axes) -> np.ndarray:
    """The RGB pixels drawn inside ``ax`` (rows top to bottom)."""
    fig.canvas.draw()
    buffer = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    box = ax.get_window_extent()
    height = buffer.shape[0]
    top, bottom = int(round(height - box.y1)), int(round(height - box.y0))
    return buffer[top + 1 : bottom - 1, int(round(box.x0)) + 1 : int(round(box.x1)) - 1]


def test_radiograph_keeps_orientation_aspect_and_grey_scale():
    image = marked_radiograph()
    fig, ax = plt.subplots(figsize=(4, 4))
    figures.show_radiograph(ax, image, side_marker=False)
    pixels = rendered_axes(fig, ax).mean(axis=2)
    # Square pixels: the drawn area has the image's 2:1 width/height ratio.
    assert pixels.shape[1] / pixels.shape[0] == pytest.approx(80 / 40, rel=0.05)
    # Not flipped: the bright block stays upper-left, at grey 0.9 * 255 (vmin 0, vmax 1).
    rows, cols = pixels.shape
    assert pixels[: rows // 8, : cols // 16].mean() == pytest.approx(0.9 * 255, abs=3)
    assert pixels[-rows // 8 :, -cols // 16 :].mean() == pytest.approx(0.1 * 255, abs=3)
    with pytest.raises(DataError, match="2-D"):
        figures.show_radiograph(ax, np.zeros((2, 3, 4)))


def test_nodule_zoom_shows_the_bbox_with_equal_aspect():
    image = marked_radiograph()
    fig, ax = plt.subplots()
    figures.show_radiograph(ax, image)
    inset = figures.add_nodule_zoom(ax, image, (2, 3, 8, 9), margin_fraction=1 / 6)  # 1 px around a 6 px box
    assert inset.get_xlim() == pytest.approx((1.5, 9.5))
    assert inset.get_ylim() == pytest.approx((8.5, 0.5))  # top row at the top, as in the main image
    assert inset.get_aspect() == 1.0
    with pytest.raises(DataError, match="empty"):
        figures.add_nodule_zoom(ax, image, (5, 5, 5, 9))


def test_image_grid_layout_and_zoom_insets():
    image = marked_radiograph(64, 64)
    fig = figures.image_grid([[image, image, image], [image, image, image]], column_titles=["DRR", "MUNIT", "Ours"],
                             row_titles=["case 1", "case 2"], bboxes=[[(20, 20, 30, 30)] * 3, [None] * 3])
    axes = fig.axes[:6]
    assert [ax.get_title() for ax in axes[:3]] == ["DRR", "MUNIT", "Ours"]
    assert [len(ax.child_axes) for ax in axes] == [1, 1, 1, 0, 0, 0]  # zoom insets on the first row only
    fig.canvas.draw()  # apply the equal aspect
    for ax in axes:
        extent = ax.get_window_extent()
        assert extent.width == pytest.approx(extent.height, rel=0.02)  # square images stay square
    with pytest.raises(DataError, match="same number"):
        figures.image_grid([[image], [image, image]])


def test_a_long_row_title_fits_its_row():
    image = marked_radiograph(64, 64)
    long_name = "pyradiomics-lung1-aug01-pa-n1 (lost)"
    fig = figures.image_grid([[image] * 4] * 2, row_titles=[long_name, "case 2"])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [ax.texts[-1] for ax in (fig.axes[0], fig.axes[4])]  # each row's title, its first image's last text
    assert titles[0].get_text().replace("\n", " ") == long_name and titles[1].get_text() == "case 2"
    row_height = fig.axes[0].get_window_extent(renderer).height
    assert titles[0].get_window_extent(renderer).height <= row_height
    assert titles[0].get_fontsize() < titles[1].get_fontsize()  # only the long one shrank


def test_save_figure_writes_pdf_and_png_atomically(tmp_path: Path):
    fig, ax = plt.subplots(figsize=(2.0, 1.0))
    ax.plot([0, 1], [0, 1])
    paths = figures.save_figure(fig, "fig_test", tmp_path)
    assert paths["pdf"].read_bytes().startswith(b"%PDF")
    with Image.open(paths["png"]) as png:
        width, height = png.size
    assert width == pytest.approx(2.0 * figures.PNG_DPI, rel=0.15) and height == pytest.approx(1.0 * figures.PNG_DPI, rel=0.25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig_test.pdf", "fig_test.png"]  # no temporary files left
    with pytest.raises(ConfigError, match="bare file stem"):
        figures.save_figure(plt.figure(), "sub/fig", tmp_path)


def test_tables_round_trip_through_csv_and_latex(tmp_path: Path):
    frame = pd.DataFrame(
        {"degradation": ["munit", "ddpm"], "psnr_db_published": [27.5, np.nan], "psnr_db_ours": [25.123456789, 21.0]}
    )
    paths = figures.write_table(frame, "table1_quality", tmp_path, float_format="%.2f", caption="PSNR")
    back = pd.read_csv(paths["csv"])
    pd.testing.assert_frame_equal(back, frame)
    latex = paths["tex"].read_text()
    assert "psnr\\_db\\_ours" in latex and "25.12" in latex and "--" in latex
    assert "\\label{tab:table1_quality}" in latex and "\\caption{PSNR}" in latex


def test_number_plots_draw_the_given_values():
    table = pd.DataFrame({"method": ["a"] * 5 + ["b"] * 5, "degradation": ["munit"] * 10, "psnr_db": np.arange(10.0)})
    fig = figures.metric_distributions(table, ["psnr_db"], "method", panel="degradation")
    points = fig.axes[0].collections
    assert [sorted(c.get_offsets()[:, 1]) for c in points] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(dict.fromkeys(table.method))  # named once, below
    assert not fig.axes[0].get_xticklabels()

    frequency = np.linspace(0.05, 0.5, 10)
    spectra = pd.concat([
        pd.DataFrame({"set": name, "frequency_cycles_per_px": frequency, "power_mean": level, "power_p10": level / 2, "power_p90": level * 2})
        for name, level in (("real_xray", 1.0), ("drr", 0.1))
    ])
    fig = figures.spectra_plot(spectra)
    assert fig.axes[0].get_yscale() == "log"
    assert fig.axes[0].lines[1].get_ydata() == pytest.approx(np.full(10, 0.1))

    nodules = pd.DataFrame({"before": [1.0, 2.0, 3.0], "after": [1.1, 0.2, 3.3], "lost": [False, True, False]})
    ax = figures.before_after_scatter(nodules, "before", "after", flag="lost").axes[0]
    kept, lost = ax.collections
    assert kept.get_offsets().tolist() == [[1.0, 1.1], [3.0, 3.3]] and lost.get_offsets().tolist() == [[2.0, 0.2]]

    rows = pd.DataFrame({"label": ["x", "y"], "mean": [1.0, 2.0], "ci_low": [0.5, 1.5], "ci_high": [1.5, 2.5], "pub": [1.2, np.nan]})
    fig = figures.forest_plot(rows, "label", published="pub")
    ax = fig.axes[0]
    drawn = [line.get_xydata()[0] for line in ax.lines if len(line.get_xydata()) == 1 and line.get_marker() == "o"]
    assert [tuple(p) for p in drawn] == [(1.0, 1.0), (2.0, 0.0)]  # first row on top
    assert dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels()))) == {1: "x", 0: "y"}


def test_perception_distortion_plot_draws_each_configuration_through_its_step_counts():
    table = pd.DataFrame({"config": ["a"] * 3 + ["b"] * 2, "steps": [4, 0, 1, 0, 1],
                          "ssim": [0.6, 0.5, 0.7, 0.5, 0.65], "psnr_db": [26.0, 25.0, 28.0, 25.0, 27.0],
                          "spectrum_distance": [0.4, 1.5, 1.2, 1.5, 1.3]})
    fig = figures.perception_distortion_plot(table, labels={"a": "method A"})
    ssim_axis, psnr_axis = fig.axes
    assert ssim_axis.lines[0].get_xydata().tolist() == [[1.5, 0.5], [1.2, 0.7], [0.4, 0.6]]  # in step order
    assert psnr_axis.lines[1].get_xydata().tolist() == [[1.5, 25.0], [1.3, 27.0]]
    assert [t.get_text() for t in ssim_axis.texts[:3]] == ["input", "1", "4"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["method A", "b"]
    assert ssim_axis.lines[0].get_color() != ssim_axis.lines[1].get_color()
    with_fixed = pd.concat([table.assign(config=table.config.map({"a": "bicubic_baseline", "b": "b"})),
                            table[table.config == "b"].assign(config="c")])
    colours = [line.get_color() for line in figures.perception_distortion_plot(with_fixed).axes[0].lines]
    assert colours[0] == figures.SERIES_COLOURS["bicubic_baseline"] and len(set(colours)) == 3
    # 05's counts: the test pairs' boxed, the DRRs' starred, on the curve's own points; a configuration without any unmarked
    fig = figures.perception_distortion_plot(table, labels={"a": "method A"}, chosen={"a": {"test_pairs": 1, "drrs": 4}})
    boxed, starred = [c.get_offsets().tolist() for c in fig.axes[1].collections[:2]]
    assert boxed == [[1.2, 28.0]] and starred == [[0.4, 26.0]]
    assert all(len(c.get_offsets()) == 0 for c in fig.axes[1].collections[2:])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["method A", "b", *(label for label, _ in figures.CHOSEN_MARKERS.values())]


def test_roc_plot_draws_curves_on_the_unit_square():
    fig = figures.roc_plot({"drr": (np.array([0, 0.5, 1]), np.array([0, 0.8, 1]))}, auc={"drr": 0.65})
    ax = fig.axes[0]
    assert ax.lines[1].get_xydata() == pytest.approx(np.array([[0, 0], [0.5, 0.8], [1, 1]]))
    assert ax.get_legend().get_texts()[0].get_text() == "drr (AUC 0.65)"
    assert ax.get_xlim() == (0, 1) and ax.get_aspect() == 1.0


def test_paper_quality_table_marks_published_and_ours():
    beside = pd.DataFrame({
        "degradation": ["munit", "munit"], "method": ["diffusionxray", "lq_input"],
        "psnr_db_published": [27.5, np.nan], "psnr_db_ours": [25.123, 18.0], "psnr_db_ours_ci_low": [24.0, 17.0],
        "psnr_db_ours_ci_high": [26.25, 19.0],
    })
    table = figures.paper_quality_table(beside, {"diffusionxray": "DiffusionXRay"}, {"munit": "MUNIT-LQ"})
    assert table.columns.tolist() == ["Test set", "Method", "PSNR (dB), published", "PSNR (dB), ours (95% CI)"]
    assert table.iloc[0].tolist() == ["MUNIT-LQ", "DiffusionXRay", "27.50", "25.12 [24.00, 26.25]"]
    assert table.iloc[1].tolist() == ["MUNIT-LQ", "lq_input", "--", "18.00 [17.00, 19.00]"]


def test_zooms_of_a_row_share_a_window_stretched_to_their_pixels():
    """A nodule in a dark lung (display 0.00-0.05) must show in the insets: the row's zooms get one
    window from their pixels' 1-99 % quantiles, not the main image's 0..1."""
    dark = np.full((40, 40), 0.01)
    dark[18:22, 18:22] = 0.05  # the nodule
    brighter = dark + 0.02
    window = figures.zoom_window([dark, brighter], [(16, 16, 24, 24)] * 2)
    assert window == pytest.approx((0.01, 0.07))
    fig = figures.image_grid([[dark, brighter]], bboxes=[[(16, 16, 24, 24), (16, 16, 24, 24)]])
    insets = [ax.child_axes[0] for ax in fig.axes[:2]]
    assert [inset.images[0].get_clim() for inset in insets] == [pytest.approx((0.01, 0.07))] * 2
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)  # the main images keep the display scale
    flat = figures.zoom_window([np.full((40, 40), 0.0)], [(16, 16, 24, 24)])
    assert flat == pytest.approx((0.0, 0.02))  # a flat zoom gets the narrowest window, inside 0..1
    plt.close(fig)
