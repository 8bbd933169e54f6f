"""The CLIPstyler baseline: its U-Net's size and shapes, the loss going down, reproducibility, options."""
import pytest
import torch

from stylemamba.encoders import load_text_image_encoder
from stylemamba.experiments.baselines.clipstyler import (ClipStylerConfig, ClipStylerRun, StyleUNet, finish_output,
                                                         stylize_clipstyler)
from stylemamba.experiments.metrics import count_parameters
from stylemamba.losses import crop_size_for
from stylemamba.perceptual import VGGFeatures


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _authors_unet_size(ngf=16):
    """Parameter count of the authors' StyleNet.UNet, layer by layer from its definition."""
    def enc(i, o):  # EncodingBlock: conv3x3, conv3x3, 1x1 skip (InstanceNorm without affine)
        return _conv(i, o, 3) + _conv(o, o, 3) + _conv(i, o, 1)

    def down(i, o):  # DownBlock: EncodingBlock + stride-2 4x4 conv
        return enc(i, o) + _conv(o, o, 4)

    def up(i, o):  # UpBlock: on concat(upsampled, skip)
        return _conv(i + o, o, 3) + _conv(o, o, 3) + _conv(i + o, o, 1)

    g = ngf
    return (_conv(3, g, 1) + enc(g, g) + down(g, g) + down(g, 2 * g) + down(2 * g, 4 * g) + enc(4 * g, 8 * g)
            + up(8 * g, 4 * g) + up(4 * g, 2 * g) + up(2 * g, g) + enc(2 * g, g) + _conv(g, 3, 1))


def test_unet_has_the_authors_size_and_keeps_the_shape():
    assert count_parameters(StyleUNet()) == _authors_unet_size(16) == 615_267
    torch.manual_seed(0)
    net = StyleUNet(base_channels=4)
    assert count_parameters(net) == _authors_unet_size(4)
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and float(y.min()) > 0 and float(y.max()) < 1
    assert net(x, use_sigmoid=False).shape == x.shape and net(x).requires_grad
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 3, 36, 40))


@pytest.fixture(scope="module")
def parts(tiny_models):
    return load_text_image_encoder(tiny_models["clip"]), VGGFeatures.from_safetensors(tiny_models["vgg19"])


def small(**kw):
    base = dict(steps=2, resolution=32, n_crops=4, base_channels=8)
    base.update(kw)
    return ClipStylerConfig(**base)


def test_the_loss_goes_down_on_tiny_models(parts, photo):
    text, vgg = parts
    run = ClipStylerRun(photo, "an oil painting by Van Gogh", text, vgg, small(steps=10, lr=2e-3))
    run.run()
    hist = run.history_floats()
    totals = [h["total"] for h in hist]
    assert len(totals) == 10 and set(hist[0]) == {"dir", "patch", "content", "tv", "total"}
    assert sum(totals[-3:]) / 3 < totals[0], totals
    assert hist[-1]["dir"] < hist[0]["dir"]  # the global direction is learnt, not only the content
    # the weighted sum is the total: 9000 patch + 500 dir + 150 content + 2e-3 tv
    h = hist[0]
    assert h["total"] == pytest.approx(9000 * h["patch"] + 500 * h["dir"] + 150 * h["content"] + 2e-3 * h["tv"],
                                       rel=1e-5)


def test_reproducible_with_a_seed(parts, photo):
    text, vgg = parts
    a = stylize_clipstyler(photo, "pop art", text, vgg, small())
    b = stylize_clipstyler(photo, "pop art", text, vgg, small())
    c = stylize_clipstyler(photo, "pop art", text, vgg, small(seed=1))
    assert a[1] == b[1] and torch.equal(a[0], b[0])
    assert a[1] != c[1]
    image, history, seconds = a
    assert image.shape == (1, 3, 32, 32) and float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert len(history) == 2 and seconds > 0


def test_options_change_the_recipe(parts, photo_loader):
    text, vgg = parts
    x = photo_loader("chelsea", (48, 64))
    run = ClipStylerRun(x, "ukiyo-e", text, None, small(resolution=None, n_crops=0, tv_weight=0.0, lr_decay_step=1))
    terms, y = run.step(0)
    assert set(terms) == {"dir", "total"}  # no VGG, no crops, no TV
    assert y.shape == (1, 3, 48, 64) and run.lr_at(0) == 5e-4 and run.lr_at(1) == 2.5e-4
    raw = run.output(finish=False)
    assert raw.shape == (1, 3, 48, 64)
    summed = ClipStylerRun(x, "ukiyo-e", text, vgg, small(resolution=None, content_reduction="sum"))
    meaned = ClipStylerRun(x, "ukiyo-e", text, vgg, small(resolution=None, content_reduction="mean"))
    assert float(summed.step(0)[0]["content"]) == pytest.approx(2 * float(meaned.step(0)[0]["content"]), rel=1e-5)
    odd = ClipStylerRun(photo_loader("astronaut", (36, 44)), "cubism", text, vgg, small(resolution=None))
    odd.step(0)
    assert odd.output().shape == (1, 3, 36, 44)  # padded to /8 inside, cropped back


def test_finish_output_mirrors_the_saved_images():
    y = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    y[..., 0, 0] = 0.5
    out = finish_output(y, contrast=1.5, normalize=False)
    gray = float((0.2989 * y[0, 0] + 0.587 * y[0, 1] + 0.114 * y[0, 2]).mean())
    assert torch.allclose(out, (1.5 * y + (1 - 1.5) * gray).clamp(0, 1))
    norm = finish_output(y, contrast=1.0, normalize=True)
    assert float(norm.min()) == 0.0 and float(norm.max()) == 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="steps"):
        ClipStylerConfig(steps=0)
    with pytest.raises(ValueError, match="resolution"):
        ClipStylerConfig(resolution=100)
    with pytest.raises(ValueError, match="unknown CLIPstyler option"):
        ClipStylerConfig.from_dict({"stpes": 3})
    cfg = ClipStylerConfig.from_dict(ClipStylerConfig(steps=7, templates=["a {} image"]).to_dict())
    assert cfg.steps == 7 and cfg.templates == ("a {} image",)
    assert crop_size_for(512, 768, ClipStylerConfig().crop_fraction, ClipStylerConfig().crop_size) == 128
