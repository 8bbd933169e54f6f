"""The measurement harness of issue 9 (stylemamba.testing.method_choices) measures what it says."""
import torch
import torch.nn.functional as F

from stylemamba.decoder_parts import in_part
from stylemamba.testing import colour_model, texture_model
from stylemamba.testing.method_choices import figures, named_property


def test_figures_see_a_redder_picture_as_red(photo_batch):
    model = colour_model()
    redder = photo_batch.clone()
    redder[:, 0] = (redder[:, 0] + 0.1).clamp(0, 1)
    f = figures(model, "red", redder, photo_batch)
    assert f["prop"] > 0.03 and f["cos"] > 0.5 and f["proj"] > 0 and 0.8 < f["ssim"] <= 1.0
    assert figures(model, "cyan", redder, photo_batch)["prop"] < 0  # the opposite prompt sees it as a loss
    assert figures(model, "red", photo_batch, photo_batch)["prop"] == 0.0


def test_named_property_of_texture_prompts_is_signed(photo_batch):
    model = texture_model()
    blurred = F.avg_pool2d(F.pad(photo_batch, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    smooth = named_property(model, "a smooth painting", blurred) - named_property(model, "a smooth painting", photo_batch)
    sketch = named_property(model, "a pencil sketch", blurred) - named_property(model, "a pencil sketch", photo_batch)
    assert bool((smooth > 0).all()) and torch.allclose(sketch, -smooth)


def test_decoder_parts_by_ldm_name():
    assert in_part("decoder.up.0.block.1.conv2.weight", "top1") and not in_part("decoder.up.1.block.0.conv1.bias", "top1")
    assert in_part("decoder.up.1.upsample.conv.weight", "top2") and not in_part("decoder.mid.block_1.conv1.weight", "top3")
    assert in_part("decoder.conv_out.weight", "top1") and in_part("decoder.norm_out.bias", "top2")
    assert in_part("post_quant_conv.weight", "all") and not in_part("decoder.conv_out.weight", "none")
