"""Image files: alpha is kept where the format can store it, and refused where it cannot."""
import pytest
import torch
from PIL import Image

from stylemamba.image_io import has_alpha, load_image, save_image


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
