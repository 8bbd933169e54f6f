"""Losses of StyleMamba (arXiv 2405.05027, Sec. 3.2) and CLIPstyler's terms it builds on.

Every loss is a small function on tensors / embeddings so it can be checked by hand. Image-text
embeddings are L2-normalised ``(B, D)`` tensors unless a docstring says otherwise; the text
direction ``text_dir`` is ``e_t - e_src`` (difference of the normalised text embeddings), passed
as is: the cosine losses normalise it themselves and the norm-ratio losses (Eq. 3, Eq. 4) need
its length. Nothing here moves data to the host: no ``.item()``, no python branches on tensor
values, so a training step stays asynchronous on the GPU.

The choices marked [choice] in ``shared/docs/METHOD.md`` are options of :class:`LossConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .options import from_options

Tensor = torch.Tensor

_EPS = 1e-12
MD_FORMS = ("directional", "eq3")
TV_FORMS = ("clipstyler", "l1")
SO_FORMS = ("directional", "eq4")
CROP_REFERENCES = ("full", "same-crop")
MASK_REFERENCES = ("full", "same-mask")
MASK_PATCH_UNITS = ("pixels", "tower")
VGG_REDUCTIONS = ("mean", "sum", "relative")


# --------------------------------------------------------------------------------------------
# directional losses
# --------------------------------------------------------------------------------------------
def _cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise ``1 - cos(a, b)``; zero vectors give cos 0 (distance 1) instead of NaN."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def directional_loss(img_emb: Tensor, src_img_emb: Tensor, text_dir: Tensor) -> Tensor:
    """Global directional loss, paper Eq. 2 (CLIPstyler's ``loss_glob``).

    ``mean_b [1 - cos(F_I(Y)_b - F_I(X)_b, text_dir_b)]``: the image must move in embedding
    space along the direction from the source text to the style text, not just towards the
    style text (which lets the image collapse onto the text's mode).
    img_emb, src_img_emb: ``(B, D)``; text_dir: ``(B, D)`` or ``(D,)`` (broadcast).
    """
    return _cosine_distance(img_emb - src_img_emb, text_dir.expand_as(img_emb)).mean()


def patch_directional_loss(
    crop_embs: Tensor, src_img_emb: Tensor, text_dir: Tensor, threshold: float = 0.7,
    src_crop_embs: Optional[Tensor] = None,
) -> Tensor:
    """CLIPstyler's patch-wise directional loss (``loss_patch``, its Eq. 4 with threshold).

    Crop ``k`` of image ``b`` (rows ordered image-major, as :func:`random_crops` returns them:
    ``B * n``) gets ``1 - cos(F_I(crop_k) - F_I(X)_b, text_dir_b)``; values below ``threshold``
    are set to zero ("rejection": crops that are already stylised enough stop pulling, so the
    loss keeps working on the others), then the mean is taken over ALL crops (zeros included),
    as CLIPstyler does. ``torch.where`` keeps it sync-free.
    src_img_emb, text_dir: ``(B, D)`` (or ``(D,)`` for text_dir).

    ``src_crop_embs`` ``(B * n, D)``, when given, replaces ``F_I(X)_b`` row by row: the embedding of the
    SAME crop of the content image (``LossConfig.crop_reference="same-crop"``). A crop upsampled to the
    tower's input is not a small copy of the whole picture; against the whole content image every crop
    shows that difference as a "style" change. Measured slightly worse (docs/METHOD_CHOICES.md), kept
    as an option.
    """
    n_rows = crop_embs.shape[0]
    batch = src_img_emb.shape[0]
    if n_rows % batch != 0:
        raise ValueError(
            f"patch_directional_loss: crop_embs has {n_rows} rows, not a multiple of the batch "
            f"size {batch} of src_img_emb (expected B * n_crops rows, image-major)"
        )
    n = n_rows // batch
    if text_dir.dim() == 1:
        text_dir = text_dir.expand(batch, -1)
    if src_crop_embs is not None:
        if src_crop_embs.shape != crop_embs.shape:
            raise ValueError(f"patch_directional_loss: src_crop_embs has shape {tuple(src_crop_embs.shape)}, "
                             f"expected the crops' shape {tuple(crop_embs.shape)}")
        src = src_crop_embs
    else:
        src = src_img_emb.repeat_interleave(n, dim=0)
    direction = text_dir.repeat_interleave(n, dim=0)
    per_crop = _cosine_distance(crop_embs - src, direction)
    per_crop = torch.where(per_crop < threshold, torch.zeros_like(per_crop), per_crop)
    return per_crop.mean()


def masked_directional_loss(
    masked_emb: Tensor,
    src_img_emb: Tensor,
    text_dir: Tensor,
    form: str = "directional",
) -> Tensor:
    """Masked directional loss ``L_md`` (paper Eq. 3), on ``Z`` = Y with 50 % of patches masked.

    * ``form="directional"`` [our default, METHOD.md]: ``mean_b [1 - cos(F_I(Z) - F_I(X),
      e_t - e_src)]``, i.e. Eq. 2 on the masked image. The paper's ablation (Table 6) shows L_md
      RAISING the style score, which is what this style-pushing form does.
    * ``form="eq3"``: the paper's Eq. 3 literally, ``mean_b ||F_I(Z) - F_I(X)|| / ||e_t - e_src||``.
      Minimising it pulls the masked image towards the content. The denominator is the length of
      ``text_dir``, which must be the raw difference ``e_t - e_src`` (as everywhere in this module).
    """
    if form == "directional":
        return directional_loss(masked_emb, src_img_emb, text_dir)
    if form == "eq3":
        raw = text_dir.expand_as(masked_emb)
        num = (masked_emb - src_img_emb).norm(dim=-1)
        den = raw.norm(dim=-1).clamp_min(_EPS)
        return (num / den).mean()
    raise ValueError(f"masked_directional_loss: unknown form {form!r}; valid forms: {MD_FORMS}")


def alpha_shift(prev_img_emb: Tensor, src_img_emb: Tensor, alpha: float = 1.0, beta: float = 1.0) -> Tensor:
    """Paper Eq. 5: ``alpha * (1 - exp(-beta * ||F_I(Y(i)) - F_I(X)||))`` per row, ``(B,)``.

    Grows from 0 (image still at the content) to ``alpha`` (image far from it); ``beta`` sets
    how fast. Computed on detached embeddings: it is a weight, not a path for gradients.
    """
    dist = (prev_img_emb.detach() - src_img_emb.detach()).norm(dim=-1)
    return alpha * (1.0 - torch.exp(-beta * dist))


def second_order_loss(
    img_emb: Tensor,
    prev_img_emb: Tensor,
    src_img_emb: Tensor,
    text_dir: Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    form: str = "directional",
) -> Tensor:
    """Second-order directional loss ``L_so`` (paper Eq. 4-5), weighted by ``alpha_shift`` (Eq. 5).

    ``Y(i)`` is the previous epoch's output: ``prev_img_emb`` is detached here, so only ``Y(i+1)`` moves.

    * ``form="directional"`` (the default, measured in docs/METHOD_CHOICES.md): ``mean_b alpha_shift_b * [1 - cos(F_I(Y(i+1))_b
      - F_I(Y(i))_b, e_t - e_src)]``: the step from the previous epoch's output must point along the text
      direction, so every epoch keeps moving the picture the prompt's way (a momentum-like push).
    * ``form="eq4"`` (the paper, as fixed in METHOD.md): ``mean_b alpha_shift_b * ||F_I(Y(i+1))_b -
      F_I(Y(i))_b||^2 / ||e_t - e_src||_b^2``. The paper divides two vectors element-wise inside the
      norm, which is ill-defined (and explodes on near-zero components); we use the ratio of squared
      norms. ``text_dir`` must be the raw direction ``e_t - e_src`` (its length matters). A distance to
      ``Y(i)`` holds the picture back: measured inert (docs/METHOD_CHOICES.md).
    """
    if form not in SO_FORMS:
        raise ValueError(f"second_order_loss: unknown form {form!r}; valid forms: {SO_FORMS}")
    prev = prev_img_emb.detach()
    weight = alpha_shift(prev, src_img_emb, alpha, beta)
    if form == "directional":
        return (weight * _cosine_distance(img_emb - prev, text_dir.expand_as(img_emb))).mean()
    num = (img_emb - prev).pow(2).sum(dim=-1)
    den = text_dir.expand_as(img_emb).pow(2).sum(dim=-1).clamp_min(_EPS)
    return (weight * num / den).mean()


def second_order_gate(dir_loss: Tensor, epoch: int, theta: float, interval: int) -> Tensor:
    """Indicator ``I(L_dir < theta)`` of the style loss, restricted to every ``interval`` epochs.

    Returns a detached 0-dim float tensor, 1. when ``L_so`` is active and 0. otherwise. Active
    when ``epoch >= interval and epoch % interval == 0`` (paper Sec. 4.4: "implemented at an
    interval of every 5 epochs"; epoch 0 is excluded since Y(i) has no predecessor yet) AND
    ``dir_loss < theta`` (paper Sec. 3.2). ``epoch`` is a python int, so that part branches on
    the host; the threshold part is ``torch.where`` on the tensor, so no device sync.
    """
    if int(interval) < 1:
        raise ValueError(f"second_order_gate: interval must be >= 1, got {interval}")
    d = torch.as_tensor(dir_loss).detach()
    if d.dim() != 0:
        d = d.mean()
    if not d.is_floating_point():
        d = d.float()
    if not (epoch >= interval and epoch % interval == 0):
        return torch.zeros_like(d)
    return torch.where(d < theta, torch.ones_like(d), torch.zeros_like(d))


# --------------------------------------------------------------------------------------------
# crops and masks
# --------------------------------------------------------------------------------------------
def _rand(shape: Tuple[int, ...], generator: Optional[torch.Generator], device, dtype) -> Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def _homography_from_points(src: Tensor, dst: Tensor) -> Tensor:
    """Batched 3x3 homographies ``Hm`` with ``Hm @ [src, 1] ~ [dst, 1]``; src, dst: ``(N, 4, 2)``.

    Solves the 8x8 direct linear system per sample with ``torch.linalg.solve`` (batched, stays
    on the device).
    """
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # (N, 8, 8)
    b = torch.cat([u, v], dim=1).unsqueeze(-1)  # (N, 8, 1)
    h = torch.linalg.solve_ex(a, b).result.squeeze(-1)  # solve_ex: no error check, no sync
    h = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)
    return h.view(-1, 3, 3)


def random_crops(
    images: Tensor,
    n_crops: int,
    crop_size: int,
    out_size: int,
    perspective: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Random (perspective-distorted) crops of every image, resized to ``out_size`` (CLIPstyler's patches).

    See :func:`_random_crops`. Coordinates and the bilinear sampling run in fp32 with autocast off:
    under bf16 autocast the homography and the sampling grid would lose up to half a pixel, and
    neighbouring output pixels would collapse onto the same source positions. The crops come back in
    the images' dtype.
    """
    dtype = images.dtype
    with torch.autocast(images.device.type, enabled=False):
        result = _random_crops(images.float() if dtype in (torch.float16, torch.bfloat16) else images, n_crops,
                               crop_size, out_size, perspective=perspective, generator=generator)
    return result.to(dtype)


def _random_crops(
    images: Tensor,
    n_crops: int,
    crop_size: int,
    out_size: int,
    perspective: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """CLIPstyler's crop augmentation: RandomCrop -> RandomPerspective(fill=0, p=1) -> Resize.

    ``images`` ``(B, 3, H, W)`` -> ``(B * n_crops, 3, out_size, out_size)``, crops of image 0
    first, then image 1, ... Differentiable w.r.t. ``images`` and built as ONE batched
    ``F.grid_sample`` (bilinear, ``align_corners=False``) over a grid that stacks the crops of
    each image, so no python loop over crops and no host sync.

    * Crop position: integer top-left corner, uniform over all positions inside the image.
    * Perspective (like torchvision's ``RandomPerspective``): each crop corner moves inwards by
      a uniform random offset in ``[0, perspective * crop_size / 2]`` per axis (continuous here,
      integers in torchvision); the crop content is warped so its corners land on the moved
      corners, and output pixels whose source falls outside the crop are 0 (``fill=0``).
      ``perspective=0`` gives plain crops: a crop with ``out_size == crop_size`` then equals
      the image slice exactly.
    * Resize to ``out_size`` is the bilinear sampling itself (no antialiasing: fine for the
      usual up-sampling 128 -> 224, aliased when ``out_size`` is much smaller than the crop).

    ``generator`` must live on ``images.device``.
    """
    if images.dim() != 4:
        raise ValueError(f"random_crops: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    n_crops, crop_size, out_size = int(n_crops), int(crop_size), int(out_size)
    if n_crops < 1 or out_size < 1:
        raise ValueError(f"random_crops: n_crops and out_size must be >= 1, got {n_crops}, {out_size}")
    if not 1 <= crop_size <= min(height, width):
        raise ValueError(
            f"random_crops: crop_size {crop_size} must be in [1, min(H, W) = {min(height, width)}]"
        )
    if not 0.0 <= perspective <= 1.0:
        raise ValueError(f"random_crops: perspective must be in [0, 1], got {perspective}")
    grid, valid = crop_grid(batch, height, width, n_crops, crop_size, out_size, perspective, generator,
                            images.device, images.dtype if images.is_floating_point() else torch.float32)
    return sample_crops(images, grid, valid)


def crop_grid(batch: int, height: int, width: int, n_crops: int, crop_size: int, out_size: int,
              perspective: float, generator: Optional[torch.Generator], device, dtype) -> Tuple[Tensor, Optional[Tensor]]:
    """The random part of :func:`_random_crops`: ``grid_sample`` grid ``(B, n*out, out, 2)`` and valid mask or None.

    Drawn without the images so a trainer can draw a whole batch's crops once and sample them image by
    image (micro-batches give the same crops as one big batch). Row ``b`` belongs to image ``b``.
    """
    coord_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    n_total = batch * n_crops

    # integer top-left corners (floor of uniform * number of positions). Constants are python
    # scalars or built on the device: a torch.tensor(..., device=cuda) copy would sync.
    u = _rand((n_total, 2), generator, device, coord_dtype)
    n_x, n_y = width - crop_size + 1, height - crop_size + 1
    top_left = torch.stack(
        [torch.floor(u[:, 0] * n_x).clamp_max(n_x - 1), torch.floor(u[:, 1] * n_y).clamp_max(n_y - 1)], dim=1
    )  # (N, 2) as (x0, y0)

    # sampling positions of the output pixels in crop pixel coordinates (pixel centres at ints)
    scale = crop_size / out_size
    lin = (torch.arange(out_size, device=device, dtype=coord_dtype) + 0.5) * scale - 0.5
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    pts = torch.stack([gx, gy], dim=-1).reshape(1, out_size * out_size, 2).expand(n_total, -1, -1)

    if perspective > 0.0:
        # corners TL, TR, BR, BL as (x, y); each moves inwards by up to perspective * half side
        idx = torch.arange(4, device=device)
        far_x = ((idx == 1) | (idx == 2)).to(coord_dtype)  # (0, 1, 1, 0)
        far_y = (idx >= 2).to(coord_dtype)  # (0, 0, 1, 1)
        is_far = torch.stack([far_x, far_y], dim=1)  # 1 where the coordinate is crop_size - 1
        corners = is_far * float(crop_size - 1)
        inward = 1.0 - 2.0 * is_far
        max_shift = perspective * (crop_size // 2)
        shifts = _rand((n_total, 4, 2), generator, device, coord_dtype) * max_shift
        moved = corners.unsqueeze(0) + inward.unsqueeze(0) * shifts
        # output point p (in the moved quadrilateral) samples the crop at H(p): H maps moved -> corners
        hom = _homography_from_points(moved, corners.unsqueeze(0).expand(n_total, -1, -1))
        homog = torch.cat([pts, torch.ones_like(pts[..., :1])], dim=-1)  # (N, P, 3)
        mapped = homog @ hom.transpose(1, 2)
        src = mapped[..., :2] / mapped[..., 2:].clamp_min(_EPS)
        inside = (src >= -0.5) & (src <= crop_size - 0.5)
        valid = inside.all(dim=-1).to(dtype)  # (N, P)
    else:
        src = pts
        valid = None

    # to image pixel coordinates, then grid_sample's normalised coordinates (align_corners=False)
    img_xy = src + top_left.unsqueeze(1)
    grid = torch.stack(
        [(2.0 * img_xy[..., 0] + 1.0) / width - 1.0, (2.0 * img_xy[..., 1] + 1.0) / height - 1.0], dim=-1
    )  # (N, P, 2)
    grid = grid.reshape(batch, n_crops * out_size, out_size, 2).to(dtype)
    if valid is not None:
        valid = valid.reshape(batch, 1, n_crops * out_size, out_size)
    return grid, valid


def sample_crops(images: Tensor, grid: Tensor, valid: Optional[Tensor]) -> Tensor:
    """Sample the crops of :func:`crop_grid` from ``images`` (same batch size) -> ``(B * n_crops, C, out, out)``."""
    batch, channels = images.shape[:2]
    out_size = grid.shape[2]
    n_crops = grid.shape[1] // out_size
    n_total = batch * n_crops
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if valid is not None:
        out = out * valid
    out = (
        out.reshape(batch, channels, n_crops, out_size, out_size)
        .permute(0, 2, 1, 3, 4)
        .reshape(n_total, channels, out_size, out_size)
    )
    return out


def n_masked_patches(n_patches: int, ratio: float) -> int:
    """``round(ratio * n_patches)`` with halves rounded UP (python's ``round`` rounds to even)."""
    return int(math.floor(ratio * n_patches + 0.5))


def patch_mask(
    batch: int,
    height: int,
    width: int,
    patch: int = 16,
    ratio: float = 0.5,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """Random patch mask of the masked directional loss (paper Sec. 3.2: 50 % of 16x16 patches).

    Returns ``(B, 1, H, W)`` float with 1 = masked pixel. Each image gets its own mask with
    EXACTLY ``n_masked_patches(n_patches, ratio)`` masked patches (top-k of uniform noise, no
    loop), as in MAE's random masking. H and W need not be multiples of ``patch``: the grid
    has ``ceil(H / patch) x ceil(W / patch)`` patches and a partial last row / column of patches
    counts as patches (cropped to the image). ``generator`` must live on ``device``.
    """
    if patch < 1:
        raise ValueError(f"patch_mask: patch must be >= 1, got {patch}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"patch_mask: ratio must be in [0, 1], got {ratio}")
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"patch_mask: batch, height, width must be >= 1, got {batch}, {height}, {width}")
    gh, gw = -(-height // patch), -(-width // patch)
    n = gh * gw
    k = n_masked_patches(n, ratio)
    mask = torch.zeros(batch, n, device=device)
    if k > 0:
        noise = torch.rand(batch, n, generator=generator, device=device)
        idx = noise.topk(k, dim=1).indices
        mask.scatter_(1, idx, 1.0)
    mask = mask.view(batch, 1, gh, gw)
    mask = mask.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return mask[:, :, :height, :width].contiguous()


def apply_mask(images: Tensor, mask: Tensor, fill: float = 0.5) -> Tensor:
    """Replace masked pixels (``mask == 1``) by ``fill``; differentiable in the kept pixels.

    The default 0.5 grey becomes exactly 0 after SigLIP's (x - 0.5) / 0.5 normalisation, i.e.
    masked patches carry no signal into the image tower. ``mask``: ``(B, 1, H, W)`` in {0, 1}.
    """
    return images * (1.0 - mask) + fill * mask


# --------------------------------------------------------------------------------------------
# content and prior losses
# --------------------------------------------------------------------------------------------
def content_loss(feats_y: Sequence[Tensor], feats_x: Sequence[Tensor], reduction: str = "mean") -> Tensor:
    """VGG content loss ``L_vgg``: the MSE between feature maps of Y and X, over layers.

    ``reduction="mean"`` averages the layers (the weight does not depend on their number);
    ``"sum"`` adds them as CLIPstyler does with conv4_2 + conv5_2 (twice the mean with two layers),
    the scale its 9000 / 150 content weights were set for.

    ``"relative"``: per image and layer, the MSE divided by the mean squared CONTENT feature of that layer
    (``mean(f_x^2)``, detached, + 1e-12), then the mean over images and layers: the relative feature error.
    A raw MSE carries the backbone's feature scale (the proof's photos: mean f_x^2 at conv4_2 ~1e5 for the
    Caffe VGG16, ~1 for a random VGG), so no raw weight means the same on two VGGs; scaling every feature by
    a constant leaves the relative loss unchanged. Per image, so micro-batches give the whole batch's value.
    """
    if reduction not in VGG_REDUCTIONS:
        raise ValueError(f"content_loss: unknown reduction {reduction!r}; valid: {VGG_REDUCTIONS}")
    if len(feats_y) != len(feats_x) or len(feats_y) == 0:
        raise ValueError(
            f"content_loss: need the same non-zero number of layers, got {len(feats_y)} and {len(feats_x)}"
        )
    if reduction == "relative":
        total = 0.0
        for fy, fx in zip(feats_y, feats_x):
            fx = fx.detach().float()
            err = (fy.float() - fx).pow(2).flatten(1).mean(dim=1)  # (B,)
            energy = fx.pow(2).flatten(1).mean(dim=1) + _EPS  # _EPS only guards an all-zero layer
            total = total + (err / energy).mean()
        return total / len(feats_y)
    total = sum(F.mse_loss(fy, fx) for fy, fx in zip(feats_y, feats_x))
    return total if reduction == "sum" else total / len(feats_y)


def range_penalty(images: Tensor) -> Tensor:
    """Mean squared distance of the pixels from [0, 1] (0 inside): pulls the decoder's raw output back
    into the range stylising clamps to, so the losses cannot earn with pixels users never see (44 % of
    held-out pixels lay outside [0, 1] without it, docs/METHOD_CHOICES.md)."""
    return (F.relu(images - 1.0).pow(2) + F.relu(-images).pow(2)).mean()


def total_variation(images: Tensor, form: str = "clipstyler") -> Tensor:
    """Total-variation prior on ``(B, C, H, W)`` images.

    * ``"clipstyler"`` (default): CLIPstyler's ``get_image_prior_losses`` ``loss_var_l2``: the
      SUM of the Frobenius norms (not squared) of the horizontal, vertical and both diagonal
      neighbour differences over the whole batch. Matches its TV weight 2e-3, but grows with
      ``sqrt(B * H * W)``.
    * ``"l1"``: mean absolute horizontal plus mean absolute vertical difference; independent
      of size.
    """
    if form == "clipstyler":
        d1 = images[:, :, :, :-1] - images[:, :, :, 1:]
        d2 = images[:, :, :-1, :] - images[:, :, 1:, :]
        d3 = images[:, :, 1:, :-1] - images[:, :, :-1, 1:]
        d4 = images[:, :, :-1, :-1] - images[:, :, 1:, 1:]
        return d1.norm() + d2.norm() + d3.norm() + d4.norm()
    if form == "l1":
        dh = (images[:, :, :, :-1] - images[:, :, :, 1:]).abs().mean()
        dv = (images[:, :, :-1, :] - images[:, :, 1:, :]).abs().mean()
        return dh + dv
    raise ValueError(f"total_variation: unknown form {form!r}; valid forms: {TV_FORMS}")


# --------------------------------------------------------------------------------------------
# configuration and combination
# --------------------------------------------------------------------------------------------
@dataclass
class LossConfig:
    """Loss weights and options; defaults are the paper's recipe (METHOD.md) + CLIPstyler's, except the
    choices measured in docs/METHOD_CHOICES.md (the paper's forms stay options).

    Weights: ``dir`` / ``patch`` / ``md`` / ``so`` multiply the style terms (the paper's overall
    style weight ``a`` is folded into them), ``lpips`` is constant, and the VGG content weight
    follows a two-step schedule (paper Sec. 4.1: 9000, "reduced to 150 after 5 epochs"):
    ``vgg_weight_start`` for epochs ``< vgg_weight_switch_epoch`` (epochs count from 0),
    ``vgg_weight_end`` from then on (the names of the Train node's inputs; the loss term is
    ``"vgg"``). The VGG term is OFF by default (0 -> 0, docs/METHOD_CHOICES.md item 5), in
    ``vgg_reduction="relative"`` units when turned on (it starts to act at about 1e4 -> 200). A weight of 0 turns its term off (``patch=0``: no crops are made). ``crop_size`` is
    in pixels at 512 px; when ``crop_fraction`` is set the crop side is ``crop_fraction * min(H, W)``
    instead (0.25 gives 128 at 512 px). ``so_theta=0.9`` is ours: SigLIP / CLIP directional losses
    start near 1.0. ``source_prompt`` is the one prompts are encoded against when no
    :class:`~stylemamba.direction.TextDirection` is given.

    Measured choices: ``patch`` 500 (CLIPstyler's 9000 took 57-87 % of the gradient and
    halved SSIM); ``so_form`` "directional" every epoch (``so_interval`` 1; the paper's "eq4" every 5
    epochs was inert); ``clamp_output`` (the losses see the output clamped to [0, 1], as users get it)
    with ``range_weight`` 1e6 on :func:`range_penalty` of the raw output; ``crop_reference`` "full"
    (crops compared with the whole content image, as CLIPstyler; "same-crop": with the same crop of it)
    and ``mask_reference`` "full" ("same-mask": the content image under the same mask);
    ``mask_patch_units`` "pixels" of the training image ("tower": pixels of the image tower's input);
    ``vgg_reduction`` "relative" (each layer's MSE over the content's own feature energy: a weight means the
    same on every VGG, :func:`content_loss`; "mean": the raw MSE averaged over the layers, as before; "sum":
    CLIPstyler's) with the VGG weights 0 (the paper's 9000 -> 150 on the raw MSE overrode the text with a real
    ImageNet VGG16, and no relative weight kept more content without losing effect on both families). A recipe recorded before an
    option existed reads with the value that reproduces it (:meth:`from_dict`).
    """

    dir: float = 500.0
    patch: float = 500.0
    md: float = 500.0
    so: float = 500.0
    lpips: float = 150.0
    vgg_weight_start: float = 0.0
    vgg_weight_end: float = 0.0
    vgg_weight_switch_epoch: int = 5
    tv: float = 0.0
    tv_form: str = "clipstyler"
    n_crops: int = 64
    crop_size: int = 128
    crop_fraction: Optional[float] = 0.25
    crop_perspective: float = 0.5
    patch_threshold: float = 0.7
    mask_patch: int = 16
    mask_ratio: float = 0.5
    mask_fill: float = 0.5
    md_form: str = "directional"
    so_alpha: float = 1.0
    so_beta: float = 1.0
    so_theta: float = 0.9
    so_interval: int = 1
    so_form: str = "directional"
    crop_reference: str = "full"
    mask_reference: str = "full"
    mask_patch_units: str = "pixels"
    clamp_output: bool = True
    range_weight: float = 1e6
    vgg_reduction: str = "relative"
    source_prompt: str = "a plain photo"

    def __post_init__(self) -> None:
        for name in ("dir", "patch", "md", "so", "lpips", "vgg_weight_start", "vgg_weight_end", "tv", "range_weight"):
            _check_real(name, getattr(self, name), 0.0, math.inf, "[0, inf)")
        _check_int(name="vgg_weight_switch_epoch", value=self.vgg_weight_switch_epoch, low=0)
        _check_int(name="n_crops", value=self.n_crops, low=1)
        _check_int(name="crop_size", value=self.crop_size, low=1)
        _check_int(name="mask_patch", value=self.mask_patch, low=1)
        _check_int(name="so_interval", value=self.so_interval, low=1)
        if self.crop_fraction is not None:
            _check_real("crop_fraction", self.crop_fraction, 0.0, 1.0, "(0, 1]", open_low=True)
        _check_real("crop_perspective", self.crop_perspective, 0.0, 1.0, "[0, 1]")
        _check_real("patch_threshold", self.patch_threshold, 0.0, 2.0, "[0, 2] (1 - cos lies in [0, 2])")
        _check_real("mask_ratio", self.mask_ratio, 0.0, 1.0, "(0, 1)", open_low=True, open_high=True)
        _check_real("mask_fill", self.mask_fill, 0.0, 1.0, "[0, 1]")
        _check_real("so_alpha", self.so_alpha, 0.0, math.inf, "[0, inf)")
        _check_real("so_beta", self.so_beta, 0.0, math.inf, "(0, inf)", open_low=True)
        _check_real("so_theta", self.so_theta, 0.0, 2.0, "[0, 2] (1 - cos lies in [0, 2])")
        if not isinstance(self.clamp_output, bool):
            raise ValueError(f"LossConfig.clamp_output must be a bool, got {self.clamp_output!r}")
        for name, valid in (("so_form", SO_FORMS), ("crop_reference", CROP_REFERENCES),
                            ("mask_reference", MASK_REFERENCES), ("mask_patch_units", MASK_PATCH_UNITS),
                            ("vgg_reduction", VGG_REDUCTIONS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"LossConfig.{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.md_form not in MD_FORMS:
            raise ValueError(f"LossConfig.md_form must be one of {MD_FORMS}, got {self.md_form!r}")
        if self.tv_form not in TV_FORMS:
            raise ValueError(f"LossConfig.tv_form must be one of {TV_FORMS}, got {self.tv_form!r}")
        if not isinstance(self.source_prompt, str) or not self.source_prompt.strip():
            raise ValueError(f"LossConfig.source_prompt must be a non-empty string, got {self.source_prompt!r}")

    def vgg_weight(self, epoch: int) -> float:
        """VGG content weight at ``epoch`` (0-based): start before the switch epoch, end from it."""
        if epoch < self.vgg_weight_switch_epoch:
            return float(self.vgg_weight_start)
        return float(self.vgg_weight_end)

    @property
    def uses_vgg(self) -> bool:
        """Whether the VGG content loss has a non-zero weight at some epoch."""
        return self.vgg_weight_start > 0 or self.vgg_weight_end > 0

    def weights(self, epoch: int) -> Dict[str, float]:
        """Weights for :func:`total_loss` at ``epoch``: dir, patch, md, so, lpips, vgg, tv, range."""
        return {
            "dir": float(self.dir),
            "patch": float(self.patch),
            "md": float(self.md),
            "so": float(self.so),
            "lpips": float(self.lpips),
            "vgg": self.vgg_weight(epoch),
            "tv": float(self.tv),
            "range": float(self.range_weight),
        }

    @property
    def references(self) -> bool:
        """Whether a step also shows the image tower crops / a masked view of the CONTENT image."""
        return (self.patch > 0 and self.crop_reference == "same-crop") or (
            self.md > 0 and self.mask_reference == "same-mask")

    def mask_patch_for(self, height: int, tower_size: int) -> int:
        """Mask patch side in training-image pixels (see ``mask_patch_units``), at least 1."""
        if self.mask_patch_units == "pixels":
            return int(self.mask_patch)
        return max(1, int(round(self.mask_patch * int(height) / int(tower_size))))

    def crop_size_for(self, height: int, width: int) -> int:
        """Crop side in pixels for an image of ``height x width`` (see class docstring)."""
        return crop_size_for(height, width, self.crop_fraction, self.crop_size)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LossConfig":
        """Build from a mapping; unknown keys are an error (they are usually typos).

        Recipes of version 0.1.0 (config files, style files) still read: ``content_weight_*`` are
        ``vgg_weight_*``, and ``use_patch: false`` is ``patch: 0``. A RECORDED recipe (one that names
        every option that existed before the measured ones, as style files and ``to_dict`` write them) that lacks
        an option added since reads with the value that reproduces it (:data:`LEGACY_VALUES`: Eq. 4,
        the raw output, no range penalty, the "mean" VGG reduction); a recorded recipe always names its VGG weights
        (9000 -> 150 before item 5), so it keeps them. A partial mapping (a ``--config`` file) gets today's defaults:
        a VGG weight given there without ``vgg_reduction`` is in "relative" units.
        """
        data = dict(data)
        if data.pop("use_patch", True) is False:
            data["patch"] = 0.0
        if LEGACY_RECIPE_KEYS <= {OLD_NAMES.get(k, k) for k in data}:
            for name, value in LEGACY_VALUES.items():
                data.setdefault(name, value)
        return from_options(cls, data, "LossConfig", renamed=OLD_NAMES)


OLD_NAMES = {"content_weight_start": "vgg_weight_start", "content_weight_end": "vgg_weight_end",
             "content_weight_switch_epoch": "vgg_weight_switch_epoch"}  # version 0.1.0's names

# the VGG content term of the paper and of version 0.1.0 (the raw MSE averaged over the layers, 9000 -> 150); per-style
# training has it off since docs/METHOD_CHOICES.md item 5, universal training and the comparisons keep it
PAPER_VGG_TERM = MappingProxyType({"vgg_reduction": "mean", "vgg_weight_start": 9000.0, "vgg_weight_end": 150.0})

# what the options added with docs/METHOD_CHOICES.md meant before they existed (the paper's forms): a recorded
# recipe without them keeps that meaning
LEGACY_VALUES = {"so_form": "eq4", "clamp_output": False, "range_weight": 0.0, "crop_reference": "full",
                  "mask_reference": "full", "mask_patch_units": "pixels", "vgg_reduction": "mean"}
# the options every recipe recorded before them names (0.1.0's names read as today's)
LEGACY_RECIPE_KEYS = frozenset({
    "dir", "patch", "md", "so", "lpips", "vgg_weight_start", "vgg_weight_end", "vgg_weight_switch_epoch", "tv",
    "tv_form", "n_crops", "crop_size", "crop_fraction", "crop_perspective", "patch_threshold", "mask_patch",
    "mask_ratio", "mask_fill", "md_form", "so_alpha", "so_beta", "so_theta", "so_interval", "source_prompt"})


def crop_size_for(height: int, width: int, crop_fraction: Optional[float], crop_size: int) -> int:
    """Crop side in pixels: ``crop_fraction * min(H, W)`` when set, else ``crop_size``; within ``[1, min(H, W)]``."""
    short = min(int(height), int(width))
    size = int(round(crop_fraction * short)) if crop_fraction is not None else int(crop_size)
    return max(1, min(short, size))


def _check_real(name: str, value: Any, low: float, high: float, text: str,
                open_low: bool = False, open_high: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value))
    if ok:
        v = float(value)
        ok = (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
        if high == math.inf:
            ok = ok and math.isfinite(v)
    if not ok:
        raise ValueError(f"LossConfig.{name} must be a number in {text}, got {value!r}")


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"LossConfig.{name} must be an integer >= {low}, got {value!r}")


def style_loss(
    img_emb: Tensor,
    src_img_emb: Tensor,
    text_dir: Tensor,
    cfg: LossConfig,
    epoch: int,
    crop_embs: Optional[Tensor] = None,
    masked_emb: Optional[Tensor] = None,
    prev_img_emb: Optional[Tensor] = None,
    src_crop_embs: Optional[Tensor] = None,
    src_masked_emb: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """Unweighted style terms of ``L_style = L_dir + L_md + I(L_dir < theta) * L_so`` (+ patch).

    Returns a dict of tensors (not detached; turning them into floats for logging is the
    caller's job): ``"dir"`` always; ``"patch"`` when ``crop_embs`` is given; ``"md"`` when
    ``masked_emb`` is given; ``"so"`` and ``"so_gate"`` (0./1., :func:`second_order_gate`) when
    ``prev_img_emb`` is given. Combine with :func:`total_loss`. ``text_dir`` is the raw ``e_t - e_src``.
    ``src_crop_embs`` / ``src_masked_emb``: embeddings of the same crops / the same mask of the content
    image (``crop_reference="same-crop"`` / ``mask_reference="same-mask"``); without them the whole content
    image is the reference.
    """
    terms: Dict[str, Tensor] = {"dir": directional_loss(img_emb, src_img_emb, text_dir)}
    if crop_embs is not None:
        terms["patch"] = patch_directional_loss(crop_embs, src_img_emb, text_dir, cfg.patch_threshold, src_crop_embs)
    if masked_emb is not None:
        src_masked = src_img_emb if src_masked_emb is None else src_masked_emb
        terms["md"] = masked_directional_loss(masked_emb, src_masked, text_dir, cfg.md_form)
    if prev_img_emb is not None:
        terms["so"] = second_order_loss(img_emb, prev_img_emb, src_img_emb, text_dir, cfg.so_alpha, cfg.so_beta,
                                        cfg.so_form)
        terms["so_gate"] = second_order_gate(terms["dir"], epoch, cfg.so_theta, cfg.so_interval)
    return terms


def total_loss(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``sum_k weights[k] * terms[k]``, with ``"so"`` multiplied by ``terms["so_gate"]`` if present.

    ``terms`` may also hold the content terms ``"lpips"``, ``"vgg"``, ``"tv"`` (see
    :meth:`LossConfig.weights`). A term without a weight is an error, so nothing is silently
    dropped.
    """
    missing = sorted(k for k in terms if k != "so_gate" and k not in weights)
    if missing:
        raise ValueError(f"total_loss: no weight for terms {missing}; weights given: {sorted(weights)}")
    if not any(k != "so_gate" for k in terms):
        raise ValueError("total_loss: no loss terms given")
    total: Optional[Tensor] = None
    for name, value in terms.items():
        if name == "so_gate":
            continue
        term = weights[name] * value
        if name == "so" and "so_gate" in terms:
            term = term * terms["so_gate"]
        total = term if total is None else total + term
    assert total is not None
    return total
