"""Evaluation metrics against independent implementations and hand computations, on real photos."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage.metrics import structural_similarity

from stylemamba.encoders import load_text_image_encoder
from stylemamba.experiments import metrics as M
from stylemamba.perceptual import LPIPSLoss, VGGFeatures


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).double().numpy()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = g.view(1, 1, -1, 1).expand(3, 1, -1, 1)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k, groups=3)
    return F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.transpose(2, 3), groups=3)


def degrade(x: torch.Tensor, sigma: float, noise: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (_blur(x, sigma) + noise * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def skimage_ssim(x: torch.Tensor, y: torch.Tensor, channel: str) -> float:
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    a, b = _np(x), _np(y)
    if channel == "rgb":
        return structural_similarity(a, b, channel_axis=-1, **kw)
    w = np.array([0.299, 0.587, 0.114])
    return structural_similarity(a @ w, b @ w, **kw)


@pytest.mark.parametrize("name,size", [("astronaut", (96, 128)), ("chelsea", (128, 128))])
@pytest.mark.parametrize("channel", ["luminance", "rgb"])
def test_ssim_matches_skimage_on_real_photos(photo_loader, name, size, channel):
    x = photo_loader(name, size)
    for sigma, noise in [(1.0, 0.02), (2.5, 0.1)]:
        y = degrade(x, sigma, noise)
        ours = float(M.ssim(x, y, channel)[0])
        ref = skimage_ssim(x, y, channel)
        assert abs(ours - ref) < 1e-3, (ours, ref)
        assert 0.0 < ours < 0.999


def test_ssim_is_per_image_and_checks_inputs(photo_batch):
    x = photo_batch
    y = torch.stack([x[0], degrade(x[1:], 2.0, 0.1)[0]])
    s = M.ssim(x, y)
    assert s.shape == (2,) and float(s[0]) == pytest.approx(1.0, abs=1e-12) and float(s[1]) < 0.9
    with pytest.raises(ValueError, match="same shape"):
        M.ssim(x, y[:, :, :32])
    with pytest.raises(ValueError, match="window"):
        M.ssim(x[..., :8, :8], y[..., :8, :8])
    with pytest.raises(ValueError, match="channel"):
        M.ssim(x, y, channel="hsv")


@pytest.fixture(scope="module")
def perceptual(tiny_models):
    vgg = VGGFeatures.from_safetensors(tiny_models["vgg19"])
    lp = LPIPSLoss(net="alex")  # random backbone: the code path and the ordering, not LPIPS' calibration
    return vgg, lp


def test_identical_images_give_the_ideal_values(photo_batch, perceptual):
    vgg, lp = perceptual
    x = photo_batch
    assert torch.allclose(M.ssim(x, x.clone(), "luminance"), torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(M.ssim(x, x.clone(), "rgb"), torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert torch.equal(M.vgg_content_loss(vgg, x, x.clone()), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(M.lpips_distance(lp, x, x.clone()), torch.zeros(2, dtype=torch.float64), atol=1e-7)


def test_a_degraded_image_scores_worse(photo_loader, perceptual):
    vgg, lp = perceptual
    x = photo_loader("chelsea", 64)
    mild, strong = degrade(x, 0.8, 0.02, seed=1), degrade(x, 3.0, 0.15, seed=2)
    for channel in ("luminance", "rgb"):
        assert 1.0 > float(M.ssim(x, mild, channel)[0]) > float(M.ssim(x, strong, channel)[0])
    assert 0.0 < float(M.vgg_content_loss(vgg, x, mild)[0]) < float(M.vgg_content_loss(vgg, x, strong)[0])
    assert 0.0 < float(M.lpips_distance(lp, x, mild)[0]) < float(M.lpips_distance(lp, x, strong)[0])


def test_vgg_metric_equals_the_training_loss_reduction(photo_batch, perceptual):
    from stylemamba.losses import content_loss

    vgg, _ = perceptual
    x, y = photo_batch, degrade(photo_batch, 1.5, 0.05)
    per_image = M.vgg_content_loss(vgg, x, y)
    assert float(per_image.mean()) == pytest.approx(float(content_loss(vgg(y), vgg(x))), rel=1e-5)


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_style_score_is_the_raw_cosine_of_each_pair(tiny_models, photo_batch, kind):
    enc = load_text_image_encoder(tiny_models[kind])
    prompts = ["an oil painting by Van Gogh", "a pencil sketch"]
    scores = M.style_score(enc, photo_batch, prompts)
    # by hand: un-normalised tower outputs, cosine = a.b / (|a| |b|)
    with torch.no_grad():
        img = enc.model.get_image_features(pixel_values=enc.preprocess(photo_batch))
        img = img if torch.is_tensor(img) else img.pooler_output
        for i, p in enumerate(prompts):
            tok = enc.tokenizer([p], padding="max_length", max_length=64 if kind == "siglip" else 77,
                                truncation=True, return_tensors="pt")
            kw = {"input_ids": tok["input_ids"]}
            if kind == "clip":
                kw["attention_mask"] = tok["attention_mask"]
            txt = enc.model.get_text_features(**kw)
            txt = (txt if torch.is_tensor(txt) else txt.pooler_output)[0]
            a, b = img[i].double().numpy(), txt.double().numpy()
            hand = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert float(scores[i]) == pytest.approx(hand, abs=1e-5)
    assert scores.shape == (2,) and bool((scores.abs() <= 1).all())
    swapped = M.style_score(enc, photo_batch, prompts[::-1])
    assert not torch.allclose(scores, swapped)  # each image is scored against its own prompt
    one = M.style_score(enc, photo_batch, prompts[0])  # a single prompt for the whole batch
    assert float(one[0]) == pytest.approx(float(scores[0]), abs=1e-6)
    with pytest.raises(ValueError, match="prompts"):
        M.style_score(enc, photo_batch, prompts * 2)


def _write_head(path, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    save_file({"weight": torch.randn(1, dim, generator=gen), "bias": torch.randn(1, generator=gen)}, str(path))
    return path


def test_aesthetic_scorer_code_path_with_a_tiny_head(tmp_path, tiny_models, photo_batch):
    clip = load_text_image_encoder(tiny_models["clip"])
    head = _write_head(tmp_path / "head.safetensors", clip.embed_dim)
    scorer = M.AestheticScorer(head, tiny_models["clip"])
    assert scorer.available and scorer.message == ""
    assert "not ViT-L/14" in scorer.note  # a tiny CLIP gives no LAION score, and says so
    scores = scorer.score(photo_batch)
    from safetensors.torch import load_file

    w = load_file(str(head))
    emb = clip.encode_image(photo_batch).detach().double()
    hand = emb / emb.norm(dim=-1, keepdim=True) @ w["weight"].double().T + w["bias"].double()
    assert torch.allclose(scores, hand[:, 0], atol=1e-5)
    # an already loaded encoder works the same
    again = M.AestheticScorer(head, clip_encoder=clip)
    assert torch.allclose(again.score(photo_batch), scores)


def test_aesthetic_scorer_refuses_wrong_models(tmp_path, tiny_models):
    clip = load_text_image_encoder(tiny_models["clip"])
    with pytest.raises(ValueError, match="768"):
        M.AestheticScorer(_write_head(tmp_path / "wide.safetensors", clip.embed_dim + 1), clip_encoder=clip)
    with pytest.raises(ValueError, match="CLIP"):
        M.AestheticScorer(_write_head(tmp_path / "h.safetensors", 32), tiny_models["siglip"])
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a LAION aesthetic head"):
        M.AestheticScorer(tmp_path / "other.safetensors", clip_encoder=clip)


def test_aesthetic_scorer_names_a_damaged_or_foreign_head_in_one_line(tmp_path, tiny_models):
    """Before: a damaged file (or a pickle renamed .safetensors) was a SafetensorError traceback, a bias of two
    numbers a RuntimeError one, another model's file listed every tensor it holds, and a folder was 'not found'."""
    clip = load_text_image_encoder(tiny_models["clip"])
    (tmp_path / "head.safetensors").write_bytes(b"\x80\x04 a pickle by another name")
    with pytest.raises(ValueError, match="head.safetensors' is not a readable .safetensors file.*docs/EVAL.md"):
        M.AestheticScorer(tmp_path / "head.safetensors", clip_encoder=clip)
    save_file({"weight": torch.zeros(1, clip.embed_dim), "bias": torch.zeros(2)}, str(tmp_path / "b2.safetensors"))
    with pytest.raises(ValueError, match="not a LAION aesthetic head"):
        M.AestheticScorer(tmp_path / "b2.safetensors", clip_encoder=clip)
    with pytest.raises(ValueError, match="not a LAION aesthetic head") as info:
        M.AestheticScorer(tiny_models["vae_ldm"], clip_encoder=clip)
    assert "more" in str(info.value) and len(str(info.value)) < 400
    assert "is a folder" in M.AestheticScorer(tmp_path, clip_encoder=clip).message


def test_aesthetic_scorer_says_which_weights_are_missing(tmp_path):
    s = M.AestheticScorer(None, None)
    assert not s.available
    for needle in ("sa_0_4_vit_l_14_linear.pth", "github.com/LAION-AI/aesthetic-predictor",
                   "openai/clip-vit-large-patch14", "safetensors", "--aesthetic-head", "--aesthetic-clip"):
        assert needle in s.message
    with pytest.raises(RuntimeError, match="skipped"):
        s.score(torch.rand(1, 3, 32, 32))
    pth = tmp_path / "sa_0_4_vit_l_14_linear.pth"
    pth.write_bytes(b"not loaded")
    s = M.AestheticScorer(pth, tmp_path)
    assert not s.available and "pickle" in s.message and "torch.load" in s.message
    s = M.AestheticScorer(tmp_path / "missing.safetensors", tmp_path / "no_clip_here")
    assert "missing.safetensors" in s.message and "no_clip_here" in s.message


def test_count_parameters():
    lin = torch.nn.Linear(3, 2)
    tied = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)
    assert M.count_parameters(lin) == 8 and M.count_parameters(tied) == 8 and M.count_parameters(None) == 0
    lin.bias.requires_grad_(False)
    assert M.count_parameters(lin, trainable_only=True) == 6
