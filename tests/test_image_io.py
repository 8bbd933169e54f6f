"""Image files: alpha is kept where the format can store it, and refused where it cannot; 16-bit tones, EXIF
orientation and Pillow's size guard are read as a user expects; a write never leaves half a file."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylemamba.image_io import has_alpha, load_image, load_mask, save_image


def test_alpha_to_jpeg_is_refused_and_palettes_without_transparency_are_rgb(tmp_path):
    rgba = torch.rand(4, 16, 24)
    with pytest.raises(ValueError, match="cannot store the alpha channel"):
        save_image(rgba, tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()
    assert load_image(save_image(rgba, tmp_path / "x.png"), keep_alpha=True).shape == (1, 4, 16, 24)
    Image.new("P", (8, 8)).save(tmp_path / "palette.png")
    assert not has_alpha(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png", keep_alpha=True).shape[1] == 3
    Image.new("P", (8, 8)).save(tmp_path / "clear.png", transparency=0)
    assert has_alpha(tmp_path / "clear.png") and load_image(tmp_path / "clear.png", keep_alpha=True).shape[1] == 4


def test_sixteen_bit_grayscale_keeps_its_tones_in_images_and_masks(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # what Pillow makes of a 16-bit PNG: convert("RGB") clips it at 255
    image, mask = load_image(tmp_path / "g16.png"), load_mask(tmp_path / "g16.png")
    expected = torch.from_numpy(ramp.astype(np.float32) / 65535)
    assert image.shape == (1, 3, 64, 64) and torch.allclose(image[0, 1], expected, atol=1e-6)
    assert mask.shape == (1, 64, 64) and torch.allclose(mask[0], expected, atol=1e-6)
    Image.fromarray(np.full((8, 8), 2.5, np.float32)).save(tmp_path / "hdr.tif")  # floats beyond 0..1
    with pytest.raises(ValueError, match="hdr.tif: a 'F' .high bit depth. image whose values are not in the 0..1"):
        load_image(tmp_path / "hdr.tif")


def test_a_phone_photo_is_read_the_way_up_its_exif_orientation_says(tmp_path):
    wide = Image.new("RGB", (64, 40))
    wide.paste((255, 0, 0), (0, 0, 8, 40))  # a red band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    wide.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    wide.convert("L").save(tmp_path / "mask.png", exif=exif)
    image, mask = load_image(tmp_path / "phone.jpg"), load_mask(tmp_path / "mask.png")
    assert image.shape == (1, 3, 64, 40) and mask.shape == (1, 64, 40)  # portrait, as viewers show it
    assert image[0, 0, :8].mean() > 0.9 and image[0, 0, -8:].mean() < 0.1  # the band is now at the top


def test_an_image_beyond_pillows_size_guard_is_a_clear_error(tmp_path, monkeypatch):
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1200 pixels > twice the limit: Pillow's error
    for read in (load_image, load_mask, has_alpha):
        with pytest.raises(ValueError, match="big.png is too large to open .* downscale it"):
            read(tmp_path / "big.png")


def test_save_image_never_leaves_a_truncated_file_under_the_final_name(tmp_path, monkeypatch):
    save_image(torch.zeros(3, 8, 8), tmp_path / "out.png")
    before = (tmp_path / "out.png").read_bytes()

    def fail_midway(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        save_image(torch.ones(3, 8, 8), tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_save_image_keeps_a_file_that_has_its_temporary_name(tmp_path):
    """The temporary name a save writes into first may be taken (the user's file, another run's): never by us."""
    (tmp_path / ".out.png.partial.png").write_bytes(b"the user's file")
    save_image(torch.zeros(3, 8, 8), tmp_path / "out.png")
    assert (tmp_path / ".out.png.partial.png").read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.png.partial.png", "out.png"]



def test_a_report_rewritten_on_a_full_disk_keeps_the_previous_one(tmp_path):
    """check --json (bench's and eval's reports alike) truncated the previous report before writing: a full disk or a
    kill in mid-write left neither. Here the disk is 'full' through the file-size limit (EFBIG, as ENOSPC)."""
    resource = pytest.importorskip("resource")
    del resource  # imported in the child, which limits its own file size
    report_path = tmp_path / "check.json"
    report_path.write_text("previous report")
    child = ("import io, resource, signal, sys\n"
             "from stylemamba.testing.check import report\n"
             "from stylemamba.testing.proof import Row\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
             "rows = [Row('red', '+0.3', '> 0', True, 'it works')]\n"
             "try:\n    report(rows, 1.0, io.StringIO(), json_path=sys.argv[1])\n"
             "except OSError as exc:\n    print('failed', exc.errno)\n")
    proc = subprocess.run([sys.executable, "-c", child, str(report_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.startswith("failed"), (proc.stdout, proc.stderr[-2000:])
    assert report_path.read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.json"]  # no half temporary file left


def test_an_output_name_near_the_limit_is_written_though_its_temporary_name_would_not_fit(tmp_path):
    """'写真' x 40 + '_styled.png' is 251 bytes, a legal name; the temporary '.NAME.partial.png' was 264 and failed with
    'File name too long' after the work, telling the user to shorten a name that was fine."""
    out = tmp_path / ("写真" * 40 + "_styled.png")
    assert len(out.name.encode()) == 251
    save_image(torch.rand(3, 8, 8), out)
    assert load_image(out).shape == (1, 3, 8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left behind


def test_a_killed_runs_unfinished_image_is_not_taken_for_an_input(tmp_path, caplog):
    """A run killed between writing '.a_styled.png.partial.png' and renaming it left a hidden .png: the next run on the
    folder stylised it as a photo (or, truncated, stopped with an error about a file `ls` does not show)."""
    import logging

    from stylemamba.image_io import list_images, partial_file

    for name in ("a.png", "b.png"):
        save_image(torch.rand(3, 8, 8), tmp_path / name)
    left = partial_file(tmp_path / "a_styled.png")  # what a kill leaves, here empty (truncated)
    left.write_bytes(b"\x89PNG half")
    with caplog.at_level(logging.INFO, logger="stylemamba"):
        assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.png"]
    assert f"leaving out 1 unfinished file(s) of a run that was killed while writing (e.g. {left.name})" in caplog.text
    hidden = tmp_path / ".c.png"  # a user's own hidden picture is still an input
    save_image(torch.rand(3, 8, 8), hidden)
    assert [p.name for p in list_images(tmp_path)] == [".c.png", "a.png", "b.png"]


def test_an_animated_image_says_only_its_first_frame_is_used(tmp_path, caplog):
    """An animated GIF or WebP was cut to its first frame without a word (exit 0, one still image)."""
    import logging

    frames = [Image.new("RGB", (16, 12), (40 * i, 90, 200)) for i in range(5)]
    for name in ("anim.gif", "anim.webp"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stylemamba"):
            image = load_image(tmp_path / name)
        assert image.shape == (1, 3, 12, 16)
        assert f"{name} has 5 frames: only the first is used; to stylise every frame, make it a video first (e.g. " \
               f"ffmpeg -i {name} anim.mp4)" in caplog.text, caplog.text
    caplog.clear()
    frames[0].save(tmp_path / "still.png")
    with caplog.at_level(logging.WARNING, logger="stylemamba"):
        load_image(tmp_path / "still.png")
    assert "frames" not in caplog.text, caplog.text
