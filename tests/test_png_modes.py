"""PNG radiographs are read by their mode and bit depth: alpha dropped, palettes applied, 12-bit data scaled by 4095."""

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from xrlib.data.xray import read_png_xray
from xrlib.errors import DataError
from xrlib.io import load_png, png_significant_bits, save_png16


@pytest.fixture
def radiograph():
    """A 64x48 smooth test image in [0, 1] with a bright disc (the 'anatomy')."""
    rows, cols = np.mgrid[0:64, 0:48]
    image = 0.2 + 0.6 * cols / 47 + 0.2 * ((rows - 32) ** 2 + (cols - 24) ** 2 < 100)
    return image.clip(0, 1)


def test_grey_with_alpha_drops_the_alpha(tmp_path, radiograph):
    grey = np.round(radiograph * 255).astype(np.uint8)
    alpha = np.where(np.arange(48) < 24, 255, 0).astype(np.uint8)[None].repeat(64, 0)
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_png_xray(tmp_path / "la.png").display, grey / 255.0, atol=1e-6)


def test_palette_image_is_read_through_its_palette(tmp_path, radiograph):
    grey = np.round(radiograph * 255).astype(np.uint8)
    indices = 255 - grey  # an inverted palette: index i shows grey 255 - i
    image = Image.fromarray(indices, mode="P")
    image.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    image.save(tmp_path / "palette.png")
    display = read_png_xray(tmp_path / "palette.png").display
    np.testing.assert_allclose(display, grey / 255.0, atol=1e-6)
    assert np.corrcoef(display.ravel(), radiograph.ravel())[0, 1] > 0.999


def test_rgba_averages_colour_and_drops_alpha(tmp_path, radiograph):
    grey = np.round(radiograph * 255).astype(np.uint8)
    Image.fromarray(np.dstack([grey, grey, grey, np.zeros_like(grey)]), mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(load_png(tmp_path / "rgba.png"), grey / 255.0, atol=1e-6)


def _save_uint16(path, values, significant_bits=None):
    info = PngImagePlugin.PngInfo()
    if significant_bits is not None:
        info.add(b"sBIT", bytes([significant_bits]))
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)
    return path


def test_12_bit_data_in_a_16_bit_png_use_their_depth(tmp_path, radiograph):
    stored = np.round(radiograph * 4095)
    without_sbit = _save_uint16(tmp_path / "twelve.png", stored)
    assert png_significant_bits(without_sbit) is None
    np.testing.assert_allclose(read_png_xray(without_sbit).display, stored / 4095, atol=1e-6)
    with_sbit = _save_uint16(tmp_path / "twelve_sbit.png", stored, significant_bits=12)
    assert png_significant_bits(with_sbit) == 12
    np.testing.assert_allclose(load_png(with_sbit), stored / 4095, atol=1e-6)
    # a dark 16-bit image that says it has 16 significant bits keeps its scale
    dark = _save_uint16(tmp_path / "dark.png", np.round(radiograph * 3000), significant_bits=16)
    np.testing.assert_allclose(load_png(dark), np.round(radiograph * 3000) / 65535, atol=1e-7)
    # sBIT 12 but values scaled up to 16 bits by the encoder, as the PNG specification asks
    scaled = _save_uint16(tmp_path / "scaled.png", np.round(radiograph * 65535), significant_bits=12)
    np.testing.assert_allclose(load_png(scaled), np.round(radiograph * 65535) / 65535, atol=1e-7)


def test_own_16_bit_files_round_trip_even_when_dark(tmp_path, radiograph):
    dark = radiograph * 0.04
    path = save_png16(tmp_path / "own.png", dark)
    assert png_significant_bits(path) == 16
    np.testing.assert_allclose(load_png(path), dark, atol=1 / 65535)


def test_other_modes_are_refused(tmp_path, radiograph):
    Image.fromarray(radiograph.astype(np.float32), mode="F").save(tmp_path / "float.tiff")
    (tmp_path / "float.png").write_bytes((tmp_path / "float.tiff").read_bytes())
    with pytest.raises(DataError, match="float.png"):
        load_png(tmp_path / "float.png")
