"""Losses of stylemamba.losses against values computed by hand on tiny tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylemamba.losses import (
    LossConfig,
    alpha_shift,
    apply_mask,
    content_loss,
    directional_loss,
    masked_directional_loss,
    n_masked_patches,
    patch_directional_loss,
    patch_mask,
    random_crops,
    range_penalty,
    second_order_gate,
    second_order_loss,
    style_loss,
    total_loss,
    total_variation,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture(scope="module")
def photo():
    """skimage's astronaut, 64x64, (1, 3, 64, 64) in [0, 1]."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(img, size=(64, 64), mode="area")


# ----- directional ---------------------------------------------------------------------------
def test_directional_loss_by_hand():
    img = t([[1, 0, 0], [0, 0, 1]])
    src = t([[0, 1, 0], [1, 0, 0]])
    text_dir = t([[1, -1, 0], [0, 1, 0]])
    # row 0: img - src = (1,-1,0) parallel to text_dir -> 0; row 1: (-1,0,1) orthogonal -> 1
    assert directional_loss(img, src, text_dir).item() == pytest.approx(0.5)
    # opposite direction -> 2
    assert directional_loss(img[:1], src[:1], -text_dir[:1]).item() == pytest.approx(2.0)
    # a (D,) text direction broadcasts
    assert directional_loss(img[:1], src[:1], text_dir[0]).item() == pytest.approx(0.0)


def test_directional_loss_matches_numpy_and_has_gradient():
    rng = np.random.default_rng(0)
    a, b, d = (rng.normal(size=(4, 5)) for _ in range(3))
    expected = np.mean(1 - np.sum((a - b) * d, 1) / (np.linalg.norm(a - b, axis=1) * np.linalg.norm(d, axis=1)))
    img = torch.tensor(a, requires_grad=True)
    loss = directional_loss(img, torch.tensor(b), torch.tensor(d))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_patch_loss_threshold_zeroes_low_crops():
    src = t([[0, 0, 1]])
    text_dir = t([[1, 0, 0]])
    # crop directions with cos 0.5, 0 and -1 against text_dir -> losses 0.5, 1, 2
    dirs = t([[1, math.sqrt(3), 0], [0, 1, 0], [-1, 0, 0]])
    crops = src + dirs
    assert patch_directional_loss(crops, src, text_dir, threshold=0.7).item() == pytest.approx(1.0)  # (0+1+2)/3
    assert patch_directional_loss(crops, src, text_dir, threshold=0.4).item() == pytest.approx(3.5 / 3)
    assert patch_directional_loss(crops, src, text_dir, threshold=2.5).item() == pytest.approx(0.0)


def test_patch_loss_routes_crops_to_their_image():
    # 2 images x 2 crops, image-major; image 1 uses a different source and direction
    src = t([[0, 0, 1], [0, 1, 0]])
    text_dir = t([[1, 0, 0], [0, 0, 1]])
    crops = t([[1, 0, 1], [-1, 0, 1], [0, 1, 1], [0, 1, -1]])
    # losses: img0: (1,0,0)->0, (-1,0,0)->2 ; img1: (0,0,1)->0, (0,0,-1)->2
    assert patch_directional_loss(crops, src, text_dir, threshold=0.7).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multiple"):
        patch_directional_loss(crops[:3], src, text_dir)


def test_masked_directional_forms():
    src = t([[0, 0, 1]])
    masked = src + t([[3, 4, 0]])
    text_dir = t([[0, 0, 2]])
    directional = masked_directional_loss(masked, src, text_dir)
    eq3 = masked_directional_loss(masked, src, text_dir, form="eq3")
    assert directional.item() == pytest.approx(1.0)  # orthogonal
    assert eq3.item() == pytest.approx(5.0 / 2.0)  # ||(3,4,0)|| / ||(0,0,2)||
    assert math.isfinite(directional.item()) and math.isfinite(eq3.item())
    assert directional.item() != pytest.approx(eq3.item())
    # the raw text direction's length is the denominator
    assert masked_directional_loss(masked, src, t([[0, 0, 10]]), form="eq3").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="directional.*eq3"):
        masked_directional_loss(masked, src, text_dir, form="l2")


# ----- second order --------------------------------------------------------------------------
def test_second_order_loss_by_hand():
    img = t([[1, 0, 0]]).requires_grad_(True)
    prev = t([[0, 1, 0]]).requires_grad_(True)
    src = t([[0, 0, 1]])
    text_dir = t([[1, 1, 0]])
    alpha, beta = 2.0, 0.5
    # ||img - prev||^2 = 2, ||text_dir||^2 = 2, ||prev - src|| = sqrt(2)
    expected = alpha * (1 - math.exp(-beta * math.sqrt(2))) * 2.0 / 2.0
    loss = second_order_loss(img, prev, src, text_dir, alpha=alpha, beta=beta, form="eq4")
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert img.grad.abs().sum() > 0
    assert prev.grad is None  # Y(i) is detached inside


def test_second_order_loss_batch_mean():
    img = t([[1, 0, 0], [0, 0, 0]])
    prev = t([[0, 1, 0], [0, 0, 0]])  # row 1: no change -> 0
    src = t([[0, 0, 1], [0, 0, 1]])
    text_dir = t([[1, 1, 0], [1, 0, 0]])
    row0 = (1 - math.exp(-math.sqrt(2))) * 2.0 / 2.0
    assert second_order_loss(img, prev, src, text_dir, form="eq4").item() == pytest.approx(row0 / 2)


def test_second_order_loss_directional_form_by_hand():
    src = t([[1, 0, 0]])
    prev = t([[1, 1, 0]])  # ||prev - src|| = 1 -> alpha_shift = 2 * (1 - e^-1)
    text_dir = t([[0, 1, 0]])
    weight = 2 * (1 - math.exp(-1))
    along = prev + t([[0, 0.1, 0]])  # the step from prev follows the text direction: loss 0
    across = prev + t([[0, 0, 0.1]])  # orthogonal step: 1 - cos = 1
    back = prev - t([[0, 0.1, 0]])  # backwards: 2
    for img, expected in ((along, 0.0), (across, weight), (back, 2 * weight)):
        value = second_order_loss(img, prev, src, text_dir, alpha=2.0, beta=1.0, form="directional")
        assert value.item() == pytest.approx(expected)
    # unlike Eq. 4 (a squared distance to prev, smallest when nothing moves) staying put is no optimum:
    # gradient descent raises the component along the direction
    img = across.clone().requires_grad_(True)
    second_order_loss(img, prev, src, text_dir).backward()  # the default form
    assert img.grad[0, 1] < 0
    with pytest.raises(ValueError, match="form"):
        second_order_loss(img, prev, src, text_dir, form="ratio")


def test_patch_loss_with_the_same_crops_of_the_content_as_reference():
    src = t([[0, 0, 1]])
    text_dir = t([[1, 0, 0]])
    crops = t([[1, 1, 1], [0, 1, 1]])
    # against the whole content image both crops carry the crop-vs-image difference (0, 1, 0) ...
    biased = patch_directional_loss(crops, src, text_dir, threshold=0.0)
    # ... against the same crops of the content image only the change made by the style is left
    same = t([[0, 1, 1], [0, 1, 1]])
    exact = patch_directional_loss(crops, src, text_dir, threshold=0.0, src_crop_embs=same)
    assert biased.item() == pytest.approx((1 - 1 / math.sqrt(2) + 1) / 2)
    assert exact.item() == pytest.approx((0.0 + 1.0) / 2)  # crop 1 unchanged: zero vector -> distance 1
    with pytest.raises(ValueError, match="src_crop_embs"):
        patch_directional_loss(crops, src, text_dir, src_crop_embs=same[:1])


def test_alpha_shift_limits():
    prev = t([[0, 1, 0]])
    src = t([[0, 0, 1]])
    assert alpha_shift(prev, src, alpha=3.0, beta=1e6).item() == pytest.approx(3.0)  # beta -> inf: alpha
    assert alpha_shift(prev, src, alpha=3.0, beta=1e-9).item() == pytest.approx(0.0, abs=1e-8)
    assert alpha_shift(src, src, alpha=3.0, beta=5.0).item() == 0.0  # no shift yet: weight 0
    assert alpha_shift(prev, src, alpha=1.0, beta=1.0).item() == pytest.approx(1 - math.exp(-math.sqrt(2)))


@pytest.mark.parametrize(
    "epoch, dir_value, expected",
    [(0, 0.5, 0.0), (5, 0.5, 1.0), (7, 0.5, 0.0), (10, 0.5, 1.0),
     (0, 0.95, 0.0), (5, 0.95, 0.0), (7, 0.95, 0.0), (10, 0.95, 0.0)],
)
def test_second_order_gate(epoch, dir_value, expected):
    dir_loss = torch.tensor(dir_value, requires_grad=True) * 1.0
    gate = second_order_gate(dir_loss, epoch, theta=0.9, interval=5)
    assert isinstance(gate, torch.Tensor) and not gate.requires_grad
    assert gate.item() == expected


def test_second_order_gate_bad_interval():
    with pytest.raises(ValueError, match="interval"):
        second_order_gate(torch.tensor(0.1), 5, theta=0.9, interval=0)


# ----- masks ---------------------------------------------------------------------------------
def _patch_grid(mask, patch):
    """(B, gh, gw) values at each patch's top-left pixel, after checking patches are constant."""
    b, _, h, w = mask.shape
    grid = mask[:, 0, ::patch, ::patch]
    up = grid.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :h, :w]
    assert torch.equal(up, mask[:, 0]), "mask is not constant inside each patch"
    return grid


@pytest.mark.parametrize(
    "h, w, patch, n_patches",
    [(32, 32, 16, 4), (64, 48, 16, 12), (48, 80, 8, 60), (256, 256, 16, 256), (40, 40, 16, 9)],
)
def test_patch_mask_masks_exactly_half(h, w, patch, n_patches):
    mask = patch_mask(3, h, w, patch=patch, ratio=0.5, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (3, 1, h, w) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    grid = _patch_grid(mask, patch)
    assert grid[0].numel() == n_patches
    expected = math.floor(0.5 * n_patches + 0.5)  # 40x40 with 16: 9 patches (partial ones count) -> 5
    assert grid.flatten(1).sum(1).tolist() == [expected] * 3
    assert n_masked_patches(n_patches, 0.5) == expected


def test_patch_mask_other_ratio_and_randomness():
    mask = patch_mask(4, 64, 64, patch=16, ratio=0.25, generator=torch.Generator().manual_seed(0))
    grid = _patch_grid(mask, 16)
    assert grid.flatten(1).sum(1).tolist() == [4.0] * 4
    # different per image of the batch, per seed and per call; reproducible with a seed
    assert not torch.equal(grid[0], grid[1])
    a = patch_mask(2, 64, 64, generator=torch.Generator().manual_seed(7))
    b = patch_mask(2, 64, 64, generator=torch.Generator().manual_seed(7))
    c = patch_mask(2, 64, 64, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(3)
    assert not torch.equal(patch_mask(2, 64, 64, generator=g), patch_mask(2, 64, 64, generator=g))
    with pytest.raises(ValueError, match="ratio"):
        patch_mask(1, 32, 32, ratio=1.5)


def test_apply_mask(photo):
    mask = patch_mask(1, 64, 64, patch=16, ratio=0.5, generator=torch.Generator().manual_seed(0))
    out = apply_mask(photo, mask, fill=0.5)
    keep = mask.expand_as(photo) == 0
    assert torch.equal(out[keep], photo[keep])
    assert torch.all(out[~keep] == 0.5)
    assert (out[~keep].numel()) == photo.numel() // 2


# ----- crops ---------------------------------------------------------------------------------
def _with_coordinates(images):
    """``images`` with two more channels holding each pixel's x and y: a crop then says where it came from."""
    b, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.cat([images, xs.expand(b, 1, h, w), ys.expand(b, 1, h, w)], dim=1)


def test_random_crops_without_perspective_equal_image_slices(photo):
    images = _with_coordinates(torch.cat([photo, photo.flip(-1)]))
    crops = random_crops(images, 6, 24, 24, perspective=0.0, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (12, 5, 24, 24)
    corners = set()
    for i in range(12):  # crops of image 0 first, then image 1
        x0, y0 = round(float(crops[i, 3, 0, 0])), round(float(crops[i, 4, 0, 0]))
        assert 0 <= x0 <= 64 - 24 and 0 <= y0 <= 64 - 24
        torch.testing.assert_close(crops[i], images[i // 6, :, y0:y0 + 24, x0:x0 + 24], atol=1e-4, rtol=0)
        corners.add((x0, y0))
    assert len(corners) > 1


def test_random_crops_perspective_stays_inside_its_box():
    h, w, size = 48, 64, 20
    ramp = _with_coordinates(torch.ones(2, 1, h, w))  # channel 0: 1 inside the image, 1: x, 2: y
    crops = random_crops(ramp, 16, size, 32, perspective=0.5, generator=torch.Generator().manual_seed(2))
    assert crops.shape == (32, 3, 32, 32)
    filled = 0
    for i in range(32):
        valid = crops[i, 0] > 0.999
        filled += int((crops[i, 0] == 0).sum())
        assert valid.float().mean() > 0.2  # corners move inwards by at most a quarter of the side
        cx, cy = crops[i, 1][valid], crops[i, 2][valid]
        # every sample lies in one crop box of the image: a span of at most `size` pixels per axis
        assert cx.min() >= -0.5 and cx.max() <= w - 0.5 and cy.min() >= -0.5 and cy.max() <= h - 0.5
        assert cx.max() - cx.min() <= size + 1e-3 and cy.max() - cy.min() <= size + 1e-3
        assert crops[i, 0, 16, 16] > 0.999  # the centre always survives the distortion
    assert filled > 0  # perspective leaves fill=0 corners


def test_random_crops_gradient_seed_and_errors(photo):
    x = photo.clone().requires_grad_(True)
    crops = random_crops(x, 4, 32, 48, perspective=0.5, generator=torch.Generator().manual_seed(0))
    crops.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    a = random_crops(photo, 4, 32, 48, generator=torch.Generator().manual_seed(5))
    b = random_crops(photo, 4, 32, 48, generator=torch.Generator().manual_seed(5))
    c = random_crops(photo, 4, 32, 48, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="crop_size"):
        random_crops(photo, 4, 65, 32)


# ----- content and prior ---------------------------------------------------------------------
def test_content_loss_by_hand():
    y = [torch.ones(1, 2, 2, 2), torch.full((1, 1, 3, 3), 2.0)]
    x = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 3, 3)]
    assert content_loss(y, x).item() == pytest.approx((1.0 + 4.0) / 2)
    assert content_loss(x, x).item() == 0.0
    with pytest.raises(ValueError, match="layers"):
        content_loss(y, x[:1])


def test_content_loss_sum_is_clipstylers_scale():
    y = [torch.ones(1, 2, 2, 2), torch.full((1, 1, 3, 3), 2.0)]
    x = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 3, 3)]
    assert content_loss(y, x, reduction="sum").item() == pytest.approx(1.0 + 4.0)
    assert content_loss(y, x).item() == pytest.approx((1.0 + 4.0) / 2)
    with pytest.raises(ValueError, match="reduction"):
        content_loss(y, x, reduction="max")


def test_content_loss_relative_by_hand_and_scale_free():
    """"relative": per image and layer MSE / mean(f_x^2) (detached), averaged; a constant factor on every feature
    (another VGG's units) leaves it unchanged, while "mean" grows with its square."""
    x = [torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 2.0], [2.0, 2.0]]]]), torch.full((2, 1, 3, 3), 3.0)]
    y = [torch.zeros(2, 1, 2, 2), torch.full((2, 1, 3, 3), 6.0)]
    # layer 1: image 0 error 1 / energy 1, image 1 error 4 / energy 4 -> 1; layer 2: 9 / 9 -> 1
    assert content_loss(y, x, reduction="relative").item() == pytest.approx(1.0, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    fx = [torch.rand(2, 4, 6, 6, generator=g) + 0.1, torch.rand(2, 8, 3, 3, generator=g) + 0.1]
    fy = [f + 0.3 * torch.randn(f.shape, generator=g) for f in fx]
    rel = content_loss(fy, fx, reduction="relative").item()
    for k in (1e-3, 397.0):
        scaled_y, scaled_x = [k * f for f in fy], [k * f for f in fx]
        assert content_loss(scaled_y, scaled_x, reduction="relative").item() == pytest.approx(rel, rel=1e-5)
        assert content_loss(scaled_y, scaled_x).item() == pytest.approx(k * k * content_loss(fy, fx).item(), rel=1e-5)
    # per image: the two halves of a batch (micro-batches) average to the whole batch's value
    halves = [content_loss([f[i:i + 1] for f in fy], [f[i:i + 1] for f in fx], reduction="relative") for i in (0, 1)]
    assert (halves[0] + halves[1]).item() / 2 == pytest.approx(rel, rel=1e-6)
    assert content_loss(fx, fx, reduction="relative").item() == 0.0


def test_content_loss_relative_gradient_reaches_y_only():
    fx = [torch.rand(1, 3, 4, 4, requires_grad=True)]
    fy = [torch.rand(1, 3, 4, 4, requires_grad=True)]
    content_loss(fy, fx, reduction="relative").backward()
    assert fy[0].grad is not None and fy[0].grad.abs().sum() > 0
    assert fx[0].grad is None or fx[0].grad.abs().sum() == 0  # the content's energy and features are detached
    with pytest.raises(ValueError, match="reduction 'relatve'.*relative"):
        content_loss(fy, fx, reduction="relatve")


def test_range_penalty_by_hand():
    img = torch.tensor([[[[-0.5, 0.0], [1.0, 1.25]]]], requires_grad=True)
    assert range_penalty(img).item() == pytest.approx((0.25 + 0.0625) / 4)
    range_penalty(img).backward()
    # pulls the pixels outside [0, 1] back in, leaves the others alone
    assert img.grad.flatten().tolist() == pytest.approx([-0.25, 0.0, 0.0, 0.125])


def test_total_variation_by_hand():
    img = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # horizontal (-1,-1): sqrt 2; vertical (-2,-2): sqrt 8; diagonals 1 and 3
    assert total_variation(img).item() == pytest.approx(math.sqrt(2) + math.sqrt(8) + 1 + 3)
    assert total_variation(img, form="l1").item() == pytest.approx(1.0 + 2.0)
    assert total_variation(torch.full((1, 3, 4, 4), 0.3)).item() == 0.0
    with pytest.raises(ValueError, match="clipstyler"):
        total_variation(img, form="l2")


# ----- config and combination ----------------------------------------------------------------
def test_loss_config_defaults_schedule_and_roundtrip():
    cfg = LossConfig()
    assert (cfg.dir, cfg.patch, cfg.md, cfg.so, cfg.lpips) == (500.0, 500.0, 500.0, 500.0, 150.0)
    # issue 9 (docs/METHOD_CHOICES.md): second-order as a push every epoch, losses on the clamped output
    assert (cfg.so_form, cfg.so_interval, cfg.clamp_output, cfg.range_weight) == ("directional", 1, True, 1e6)
    assert (cfg.crop_reference, cfg.mask_reference, cfg.mask_patch_units, cfg.vgg_reduction) == (
        "full", "full", "pixels", "relative")
    assert cfg.weights(0)["range"] == 1e6
    # item 5: the VGG term is off by default (relative units when turned on); the schedule itself is unchanged
    assert [cfg.vgg_weight(e) for e in (0, 4, 5, 19)] == [0.0, 0.0, 0.0, 0.0] and not cfg.uses_vgg
    paper = LossConfig(vgg_weight_start=9000.0, vgg_weight_end=150.0)
    assert [paper.vgg_weight(e) for e in (0, 4, 5, 19)] == [9000.0, 9000.0, 150.0, 150.0] and paper.uses_vgg
    assert paper.weights(3)["vgg"] == 9000.0 and paper.weights(5)["vgg"] == 150.0
    assert LossConfig(patch=0.0).weights(0)["patch"] == 0.0
    # 0.1.0's names still read (config files, recipes in style files)
    old = LossConfig.from_dict({"content_weight_start": 7.0, "content_weight_end": 3.0,
                                "content_weight_switch_epoch": 2, "use_patch": False})
    assert (old.vgg_weight_start, old.vgg_weight_end, old.vgg_weight_switch_epoch, old.patch) == (7.0, 3.0, 2, 0.0)
    assert LossConfig.from_dict({"use_patch": True}).patch == cfg.patch
    assert cfg.crop_size_for(512, 512) == 128 and cfg.crop_size_for(256, 384) == 64
    assert LossConfig(crop_fraction=None).crop_size_for(96, 200) == 96
    again = LossConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="unknown LossConfig option.*mask_ratoi"):
        LossConfig.from_dict({"mask_ratoi": 0.5})


@pytest.mark.parametrize(
    "field, value, text",
    [("mask_ratio", 1.0, r"mask_ratio.*\(0, 1\)"), ("mask_ratio", 0.0, "mask_ratio"),
     ("n_crops", 0, r"n_crops.*>= 1"), ("dir", -1.0, r"dir.*\[0, inf\)"), ("so_beta", 0.0, "so_beta"),
     ("md_form", "eq4", "md_form.*eq3"), ("crop_perspective", 1.5, "crop_perspective"),
     ("patch_threshold", 3.0, "patch_threshold"), ("so_interval", 0, "so_interval"),
     ("so_form", "ratio", "so_form.*eq4"), ("crop_reference", "same", "crop_reference.*same-crop"),
     ("mask_reference", None, "mask_reference.*same-mask"), ("mask_patch_units", "tokens", "mask_patch_units.*tower"),
     ("clamp_output", 1, "clamp_output.*bool"), ("range_weight", -1.0, "range_weight"),
     ("vgg_reduction", "max", "vgg_reduction.*sum.*relative.*'max'"),
     ("source_prompt", "  ", "source_prompt"), ("n_crops", 2.5, "n_crops")],
)
def test_loss_config_validation_names_the_field(field, value, text):
    with pytest.raises(ValueError, match=text):
        LossConfig(**{field: value})


def test_style_loss_and_total_loss():
    cfg = LossConfig(md_form="directional", so_theta=0.9, so_interval=5)
    img = t([[1, 0, 0]])
    src = t([[0, 1, 0]])
    text_dir = t([[1, -1, 0]])  # dir loss 0 -> gate open on gated epochs
    crops = t([[1, 0, 0], [0, 0, 1]])
    masked = t([[0, 0, 1]])
    prev = t([[0, 0, 1]])
    terms = style_loss(img, src, text_dir, cfg, epoch=5, crop_embs=crops, masked_emb=masked, prev_img_emb=prev)
    assert set(terms) == {"dir", "patch", "md", "so", "so_gate"}
    assert terms["so_gate"].item() == 1.0
    w = cfg.weights(5)
    expected = sum(w[k] * terms[k] for k in ("dir", "patch", "md", "so"))
    torch.testing.assert_close(total_loss(terms, w), expected)
    closed = style_loss(img, src, text_dir, cfg, epoch=6, crop_embs=crops, masked_emb=masked, prev_img_emb=prev)
    expected_closed = sum(w[k] * closed[k] for k in ("dir", "patch", "md"))
    assert closed["so"].item() > 0
    torch.testing.assert_close(total_loss(closed, w), expected_closed)
    only_dir = style_loss(img, src, text_dir, LossConfig(patch=0.0), epoch=0)  # no crops made: no patch term
    assert set(only_dir) == {"dir"}
    with pytest.raises(ValueError, match="no weight.*lpips"):
        total_loss({"dir": terms["dir"], "lpips": terms["dir"]}, {"dir": 1.0})


def test_style_loss_options_of_issue_9():
    img, src, text_dir = t([[1, 0, 0]]), t([[0, 1, 0]]), t([[1, -1, 0]])
    crops, same_crops = t([[1, 1, 1], [0, 1, 1]]), t([[0, 1, 1], [0, 1, 1]])
    masked, same_mask = t([[1, 1, 0]]), t([[0, 1, 0]])
    prev = t([[0, 1, 0]])
    cfg = LossConfig(patch_threshold=0.0, so_theta=2.0)
    terms = style_loss(img, src, text_dir, cfg, epoch=1, crop_embs=crops, masked_emb=masked, prev_img_emb=prev,
                       src_crop_embs=same_crops, src_masked_emb=same_mask)
    torch.testing.assert_close(terms["patch"], patch_directional_loss(crops, src, text_dir, 0.0, same_crops))
    torch.testing.assert_close(terms["md"], masked_directional_loss(masked, same_mask, text_dir))
    torch.testing.assert_close(terms["so"], second_order_loss(img, prev, src, text_dir, form="directional"))
    assert terms["so_gate"].item() == 1.0  # so_interval 1: every epoch from 1 on
    eq4 = style_loss(img, src, text_dir, LossConfig(so_form="eq4"), epoch=1, prev_img_emb=prev)
    torch.testing.assert_close(eq4["so"], second_order_loss(img, prev, src, text_dir, form="eq4"))
    assert LossConfig().mask_patch_for(512, 224) == 16
    assert LossConfig(mask_patch_units="tower").mask_patch_for(512, 224) == 37  # 16 tower pixels at 512 px
    assert LossConfig(mask_patch_units="tower").mask_patch_for(64, 64) == 16
    assert not LossConfig().references and LossConfig(crop_reference="same-crop").references
    assert not LossConfig(crop_reference="same-crop", patch=0.0).references


def test_a_recipe_recorded_before_issue_9_keeps_its_meaning():
    """A complete recorded recipe without the options of issue 9 reads with the values it was trained with
    (Eq. 4, raw output, no range penalty); a partial --config mapping gets today's defaults."""
    from pathlib import Path

    from stylemamba.style_file import read_style_metadata

    old = read_style_metadata(Path(__file__).parent / "data" / "v0_1_0" / "style_v0_1_0.safetensors")["recipe"]["loss"]
    cfg = LossConfig.from_dict(old)
    assert (cfg.so_form, cfg.clamp_output, cfg.range_weight) == ("eq4", False, 0.0)
    assert (cfg.patch, cfg.so_interval) == (old["patch"], old["so_interval"])  # recorded values, not today's
    # item 5: the recorded VGG weights in the raw "mean" units they were trained with, not today's relative 0 -> 0
    assert (cfg.vgg_reduction, cfg.vgg_weight_start, cfg.vgg_weight_end) == (
        "mean", old["content_weight_start"], old["content_weight_end"]) and cfg.uses_vgg
    before = {k: v for k, v in LossConfig().to_dict().items() if k not in
              ("so_form", "crop_reference", "mask_reference", "mask_patch_units", "clamp_output", "range_weight",
               "vgg_reduction")}  # what to_dict wrote before issue 9
    assert LossConfig.from_dict(before).so_form == "eq4"
    assert LossConfig.from_dict(before).vgg_reduction == "mean"
    partial = LossConfig.from_dict({"patch": 300.0, "so_interval": 5})
    assert (partial.so_form, partial.clamp_output, partial.range_weight) == ("directional", True, 1e6)
    assert LossConfig.from_dict(LossConfig().to_dict()) == LossConfig()


def test_a_recipe_recorded_before_item_5_keeps_its_vgg_term():
    """to_dict between issue 9 and item 5 wrote vgg_reduction "mean" with 9000 -> 150: it reads as trained (the
    term on, raw units); a partial mapping gets today's relative units, and the old names still read."""
    recorded = dict(LossConfig().to_dict(), vgg_reduction="mean", vgg_weight_start=9000.0, vgg_weight_end=150.0)
    cfg = LossConfig.from_dict(recorded)
    assert (cfg.vgg_reduction, cfg.vgg_weight(0), cfg.vgg_weight(5)) == ("mean", 9000.0, 150.0)
    partial = LossConfig.from_dict({"vgg_weight_start": 1e4, "vgg_weight_end": 200.0})
    assert (partial.vgg_reduction, partial.vgg_weight(0), partial.vgg_weight(5)) == ("relative", 1e4, 200.0)
    assert LossConfig.from_dict({"content_weight_start": 9000.0, "content_weight_end": 150.0}).uses_vgg
    assert LossConfig.from_dict({"vgg_reduction": "sum"}).vgg_reduction == "sum"


def test_random_crops_keep_full_precision_coordinates_under_bf16_autocast():
    """Under bf16 autocast the crops must sample the same positions as in fp32 (only pixel values round)."""
    from conftest import load_photo

    img = load_photo("astronaut", 128)
    ref = random_crops(img, 4, 64, 96, perspective=0.5, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = random_crops(img.bfloat16(), 4, 64, 96, perspective=0.5, generator=torch.Generator().manual_seed(3))
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.02  # bf16 rounding of values only, no shifted sampling positions
