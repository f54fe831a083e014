"""Images and masks as users bring them: phone photos (EXIF orientation), NaN floats, soft and coloured masks,
and photos larger than an SD model should work on. Every image is built here, a few pixels in size."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dragnb.coords import Geometry, load_image, load_mask

EXIF_ORIENTATION = 0x0112


def marked_image(w: int = 16, h: int = 8) -> Image.Image:
    """A w×h RGB image, black but for a red top-left pixel and a green top-right pixel."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)
    arr[0, w - 1] = (0, 255, 0)
    return Image.fromarray(arr)


def with_orientation(img: Image.Image, path, orientation: int) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    img.save(path, exif=exif)


# ---- images ----------------------------------------------------------------------------------------

def test_exif_orientation_makes_a_phone_photo_upright(tmp_path):
    # orientation 6: the camera was turned clockwise; viewers rotate the stored pixels 90° clockwise
    with_orientation(marked_image(), tmp_path / "phone.png", 6)
    assert Image.open(tmp_path / "phone.png").size == (16, 8)  # stored sideways
    for given in (tmp_path / "phone.png", str(tmp_path / "phone.png"), Image.open(tmp_path / "phone.png")):
        img = load_image(given)
        assert img.size == (8, 16) and img.mode == "RGB"
        arr = np.asarray(img)
        assert tuple(arr[0, 7]) == (255, 0, 0)    # the stored top-left is now top-right
        assert tuple(arr[15, 7]) == (0, 255, 0)   # the stored top-right is now bottom-right
    with_orientation(marked_image(), tmp_path / "plain.png", 1)  # orientation 1 (upright): pixels as stored
    assert np.array_equal(np.asarray(load_image(tmp_path / "plain.png")), np.asarray(marked_image()))


def test_mask_with_the_same_exif_orientation_stays_aligned(tmp_path):
    img = marked_image()
    mask = np.zeros((8, 16), np.uint8)
    mask[0, :4] = 255  # the stored top-left corner
    with_orientation(img, tmp_path / "photo.png", 6)
    with_orientation(Image.fromarray(mask), tmp_path / "mask.png", 6)
    upright = load_image(tmp_path / "photo.png")
    m = load_mask(tmp_path / "mask.png", upright.size)
    assert m.shape == (16, 8) and m[:4, 7].all() and m.sum() == 4  # top-right column, as the red pixel


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_image_with_nan_or_inf_is_refused(bad):
    arr = np.full((8, 8, 3), 0.5, np.float32)
    arr[2, 3, 1] = bad
    with pytest.raises(ValueError, match=r"float image holds 1 NaN/inf value\(s\).*nan_to_num"):
        load_image(arr)
    with pytest.raises(ValueError, match="NaN/inf"):  # a 32-bit float PIL image ('F') too
        load_image(Image.fromarray(arr[..., 1]))


def test_float_images_in_range_still_load():
    arr = np.linspace(0, 1, 8 * 8 * 3).reshape(8, 8, 3)
    assert np.array_equal(np.asarray(load_image(arr)), (arr * 255).round().astype(np.uint8))
    assert load_image(arr.astype(np.float16)).size == (8, 8)
    with pytest.raises(ValueError, match=r"span \[0, 2\].*\[0, 1\]"):
        load_image(arr * 2)


def test_unreadable_image_files_are_a_clear_error(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"image file '.*notes\.png' is not a readable image.*PNG or JPEG"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ValueError, match=r"mask file '.*notes\.png' is not a readable image"):
        load_mask(tmp_path / "notes.png", (8, 8))
    with pytest.raises(ValueError, match=r"mask file '.*missing\.png' does not exist"):
        load_mask(tmp_path / "missing.png", (8, 8))


# ---- masks -----------------------------------------------------------------------------------------

def test_bool_and_uint8_masks_keep_their_meaning():
    m = np.zeros((8, 8), bool)
    m[2:4, 2:4] = True
    assert np.array_equal(load_mask(m, (8, 8)), m)
    assert np.array_equal(load_mask(m.astype(np.uint8) * 255, (8, 8)), m)  # 0/255
    assert np.array_equal(load_mask(m.astype(np.uint8), (8, 8)), m)        # 0/1
    grey = m.astype(np.uint8) * 200
    grey[0, 0] = 100  # uint8 0-255: above 127 may change
    assert np.array_equal(load_mask(grey, (8, 8)), m)
    assert np.array_equal(load_mask(Image.fromarray(m.astype(np.uint8) * 255), (8, 8)), m)  # PIL 'L'
    assert np.array_equal(load_mask(Image.fromarray(m), (8, 8)), m)                        # PIL '1'
    assert load_mask(None, (8, 8)) is None


def test_soft_float_mask_is_thresholded_at_one_half():
    soft = np.zeros((8, 8), np.float32)
    soft[:, 4:] = 0.7
    soft[:, 2:4] = 0.3   # feathered edge: below one half stays fixed
    soft[0, 0] = 0.5     # exactly one half: fixed (strictly above counts)
    m = load_mask(soft, (8, 8))
    assert m[:, 4:].all() and not m[:, :4].any()
    with pytest.raises(ValueError, match=r"float mask values span \[0, 255\].*thresholded at 0.5"):
        load_mask(soft * 0 + np.where(soft > 0.5, 255.0, 0.0), (8, 8))
    soft[1, 1] = np.nan
    with pytest.raises(ValueError, match="float mask holds 1 NaN/inf"):
        load_mask(soft, (8, 8))


@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)])
def test_colour_masks_count_any_painted_channel(colour, tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[3:6, 1:4] = colour
    expect = np.zeros((8, 10), bool)
    expect[3:6, 1:4] = True
    assert np.array_equal(load_mask(rgb, (10, 8)), expect)
    Image.fromarray(rgb).save(tmp_path / "mask.png")
    assert np.array_equal(load_mask(tmp_path / "mask.png", (10, 8)), expect)
    assert np.array_equal(load_mask(Image.fromarray(rgb).convert("P"), (10, 8)), expect)


def test_rgba_mask_transparent_pixels_are_not_editable():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255            # white everywhere ...
    rgba[2:5, 2:5, 3] = 255        # ... but opaque only here
    m = load_mask(rgba, (8, 8))
    assert m.sum() == 9 and m[2:5, 2:5].all()
    assert np.array_equal(load_mask(Image.fromarray(rgba), (8, 8)), m)
    soft_rgb = np.zeros((8, 8, 3), np.float64)
    soft_rgb[1, 1, 1] = 0.9  # a float colour mask: the same "any channel above one half"
    assert load_mask(soft_rgb, (8, 8)).sum() == 1


def test_mask_errors_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match=r"mask of shape \(8, 9\) does not match the 8×8 image"):
        load_mask(np.ones((8, 9), bool), (8, 8))
    with pytest.raises(ValueError, match="no editable pixel"):
        load_mask(np.zeros((8, 8, 3), np.uint8), (8, 8))
    with pytest.raises(ValueError, match=r"mask of shape \(8, 8, 5\) is not a mask"):
        load_mask(np.ones((8, 8, 5), np.uint8), (8, 8))
    with pytest.raises(TypeError, match="mask dtype complex128"):
        load_mask(np.ones((8, 8), complex), (8, 8))


# ---- working size ----------------------------------------------------------------------------------

def sd_like(max_side):
    """What Geometry reads from an SD-1.5 model: factor 8, 3 UNet downsamplings."""
    return SimpleNamespace(size_multiple=64, latent_scale=8, max_side=max_side)


def test_large_photo_on_an_sd_model_is_worked_at_1024_with_a_warning():
    from dragnb.models import DEFAULT_MAX_SIDE, tiny_model
    assert DEFAULT_MAX_SIDE == 1024 and tiny_model().max_side == DEFAULT_MAX_SIDE  # SD-style models get the cap
    with pytest.warns(UserWarning, match=r"4000×3000 is larger than this model's max_side=1024: it is worked on at "
                                         r"1024×768.*set model\.max_side") as rec:
        g = Geometry.for_model((4000, 3000), sd_like(DEFAULT_MAX_SIDE), 0.5)
    assert len(rec) == 1 and "None for no limit" in str(rec[0].message)
    assert g.work_wh == (1024, 768) and g.latent_hw == (96, 128) and g.grid_hw == (384, 512)
    assert g.image_wh == (4000, 3000)
    with pytest.warns(UserWarning, match="worked on at 768×1024"):  # an (EXIF-turned) portrait
        assert Geometry.for_model((3000, 4000), sd_like(DEFAULT_MAX_SIDE), 0.5).work_wh == (768, 1024)
    with pytest.warns(UserWarning, match=r"worked on at 2048×1536"):
        assert Geometry.for_model((4000, 3000), sd_like(2048), 0.5).work_wh == (2048, 1536)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no limit, sides already multiples of 64: no resize, no warning
        assert Geometry.for_model((4032, 3008), sd_like(None), 0.5).work_wh == (4032, 3008)
        assert Geometry.for_model((512, 512), sd_like(DEFAULT_MAX_SIDE), 0.5).work_wh == (512, 512)


def test_max_side_rounding_never_exceeds_the_limit_and_bad_settings_are_refused():
    with pytest.warns(UserWarning, match="max_side=1000"):
        g = Geometry.for_model((3000, 3000), sd_like(1000), 0.5)
    assert g.work_wh == (960, 960)  # 1000 is not a multiple of 64: the largest multiple below it
    for bad in (10, 0, 512.5, "1024", True):
        with pytest.raises(ValueError, match=r"model\.max_side=.* is invalid.*≥ 64.*None for no limit"):
            Geometry.for_model((100, 100), sd_like(bad), 0.5)


def test_the_demo_model_keeps_its_working_size():
    """The shipped demo model works at its training size (64), exactly as before the SD default existed."""
    from dragnb.models import load_model
    demo = load_model("demo", device="cpu")
    assert (demo.max_side, demo.size_multiple) == (64, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Geometry.for_model((64, 64), demo, 0.5).work_wh == (64, 64)
    with pytest.warns(UserWarning, match="worked on at 64×48"):
        assert Geometry.for_model((128, 96), demo, 0.5).work_wh == (64, 48)
    with pytest.warns(UserWarning, match=r"44×30 is worked on at 48×32"):  # rounding only: the old message
        assert Geometry.for_model((44, 30), demo, 0.5).work_wh == (48, 32)
