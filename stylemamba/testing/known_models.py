"""Image-text models of KNOWN meaning: the proof that a style moves pictures towards its prompt.

There are no pretrained SigLIP/CLIP weights on our machines, and a random-weight SigLIP gives the
losses a direction that means nothing. These models keep the interface of
:class:`stylemamba.encoders.TextImageEncoder` (``encode_text``, ``encode_image``, ``image_size``,
``name``, ``kind``, ``device``, ``embed_dim``; an ``nn.Module``) but their embeddings are written
down by hand, so "the style moved the photo along its prompt" is a measurable statement.

Image embedding (before L2 normalisation), one named axis per known statistic::

    photo    1                                    a constant: every picture is "a photo"
    red      CHROMA_SCALE * mean(R - L)           L = (R + G + B) / 3: hue / chroma, NOT brightness
    green    CHROMA_SCALE * mean(G - L)           (adding grey or changing brightness leaves them at 0)
    blue     CHROMA_SCALE * mean(B - L)
    texture  TEXTURE_SCALE * (log share - ref)    share = high-frequency energy of L / variance of L
    bright   TONE_SCALE * (mean(L) - 0.45)        seen by every model, in no prompt: a nuisance axis
    contrast TONE_SCALE * log(std(L) / 0.2)       seen by every model, in no prompt: a nuisance axis

The colour family has photo + red/green/blue + bright/contrast, the texture family photo + texture
+ bright/contrast, the combined model all seven. A prompt of the vocabulary is ``normalise(photo + TEXT_STRENGTH * d)``
with ``d`` a unit direction over the named axes ("red" = (2,-1,-1)/sqrt 6 on red/green/blue,
"a pencil sketch" = +texture, "a smooth painting" = -texture, ...); the source prompt "a plain
photo" is the photo axis alone, which is where natural photos embed (their mean chroma is small and
``ref`` is a natural photo's texture statistic at the model's input size). So ``e_t - e_src``
points along the prompt's named property, and ``F_I(Y) - F_I(X)`` along the change of that property
in the picture. Unknown prompts raise :class:`UnknownPrompt` (listing the vocabulary).

Pitfalls met while building them (they decide what the proof can and cannot show):

* **Brightness.** A model whose colour axes see brightness (e.g. mean(B) instead of mean(B - L))
  lets "blue" be satisfied partly by darkening the red and green channels, i.e. by making the
  photo dark; the chroma axes here are brightness-free, so a darker or lighter photo is not "blue".
  Chroma still scales with contrast: a darker *coloured* picture has less chroma.
* **Too few axes make the directional loss blind.** With only photo + texture, every embedding lies
  on a circle, ``F_I(Y) - F_I(X)`` is (anti)parallel to the text direction whatever the picture does,
  and the cosine is +-1 with zero gradient. Every model therefore also sees brightness and contrast
  (axes no prompt points along): changes there lower the cosine, as unrelated changes do in a real
  model, so darkening or flattening the photo costs instead of earning.
* **Texture by contrast.** Raw high-frequency energy falls when the picture gets darker or flatter,
  so "a smooth painting" could be met by lowering contrast; dividing by the variance of L makes the
  texture axis contrast- and brightness-free (a share of the variance, in [0, 1]).
* **Crops are smoother than the image.** The trainer's patch loss upsamples small crops to the
  model's input size, which removes high frequencies: a crop's texture statistic is far below the
  full image's, so a crop embedding compared with the FULL content embedding (as the patch loss does)
  already "moves" towards "a smooth painting" and away from "a pencil sketch" without any change to
  the picture. This biases the patch loss on texture prompts (docs/KNOWN_MODELS.md).
* **Unclamped pixels.** The losses see the decoder's raw output; these models are linear in the
  pixels, so pixels beyond [0, 1] earn chroma that clamping at inference removes. Measure the
  properties on the clamped, stylised picture (what users get), not on the training output.
* **A global mean is spatially blind.** Making a few pixels very red moves the colour axes as much
  as making all of them a little red; check that the change is spread (e.g. SSIM of content) when it
  matters.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

AXES = ("photo", "red", "green", "blue", "texture", "bright", "contrast")
FAMILIES = {
    "colour": ("photo", "red", "green", "blue", "bright", "contrast"),
    "texture": ("photo", "texture", "bright", "contrast"),
    "combined": AXES,
}
SOURCE_PROMPT = "a plain photo"

CHROMA_SCALE = 2.0  # natural photos: |mean(R - L)| ~ 0.0-0.25, so the colour axes are ~0-0.5
TEXTURE_SCALE = 0.5  # log-share differences of a few units between a sketch and a blurred photo
TEXT_STRENGTH = 1.0  # a prompt is 45 degrees from "a plain photo": ||e_t - e_src|| = 0.77, like SigLIP prompts
TONE_SCALE = 1.0  # brightness 0.3-0.6 and contrast (std of L) 0.15-0.3 in photos: axes ~ +-0.2
DEFAULT_IMAGE_SIZE = 64
# log(share) of natural photos at the model's input size (mean over the bundled photos astronaut, chelsea,
# coffee, rocket, camera: -2.41, -2.71, -2.98, -3.36, -3.59 at 32, 48, 64, 96, 128 px): centres the texture
# axis so a plain photo embeds near "a plain photo"
TEXTURE_REF = {32: -2.4, 48: -2.7, 64: -3.0, 96: -3.4, 128: -3.6}
_EPS = 1e-4


def _unit(**axes: float) -> Dict[str, float]:
    norm = math.sqrt(sum(v * v for v in axes.values()))
    return {k: v / norm for k, v in axes.items()}


_RED = _unit(red=2, green=-1, blue=-1)
_GREEN = _unit(red=-1, green=2, blue=-1)
_BLUE = _unit(red=-1, green=-1, blue=2)
_WARM = _unit(red=1, blue=-1)
COLOUR_WORDS: Dict[str, Dict[str, float]] = {
    "red": _RED, "green": _GREEN, "blue": _BLUE,
    "cyan": {k: -v for k, v in _RED.items()}, "magenta": {k: -v for k, v in _GREEN.items()},
    "yellow": {k: -v for k, v in _BLUE.items()},
    "warm": _WARM, "cool": {k: -v for k, v in _WARM.items()},
}
TEXTURE_WORDS: Dict[str, Dict[str, float]] = {
    "a pencil sketch": {"texture": 1.0},
    "a smooth painting": {"texture": -1.0},
}
COMBINED_WORDS: Dict[str, Dict[str, float]] = {
    "a red pencil sketch": _unit(**{k: v for k, v in _RED.items()}, texture=1.0),
    "a smooth blue painting": _unit(**{k: v for k, v in _BLUE.items()}, texture=-1.0),
}


class UnknownPrompt(ValueError):
    """A prompt outside a known-meaning model's vocabulary (the message lists the vocabulary)."""


def normalise_prompt(prompt: str) -> str:
    return " ".join(str(prompt).lower().split()).rstrip(".")


# ------------------------------------------------------------------------------------------
# the named properties, measurable on any picture (differentiable)
# ------------------------------------------------------------------------------------------
def luminance(x01: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,1,H,W): the plain channel mean (the grey level the chroma axes ignore)."""
    return x01.mean(dim=1, keepdim=True)


def chroma(x01: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,3): mean of each channel minus the luminance: redness, greenness, blueness.

    Brightness-free (adding grey or scaling all channels of a grey picture leaves it at 0); the three
    values sum to 0. "warmth" is red - blue.
    """
    return (x01 - luminance(x01)).mean(dim=(2, 3))


def _blur(lum: torch.Tensor) -> torch.Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=lum.device, dtype=lum.dtype) / 16.0
    pad = F.pad(lum, (2, 2, 2, 2), mode="replicate")
    out = F.conv2d(pad, k1.view(1, 1, 1, 5))
    return F.conv2d(out, k1.view(1, 1, 5, 1))


def high_frequency_energy(x01: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,): mean squared difference between the luminance and its 5x5 binomial blur
    (edges, hatching, grain: what a pencil sketch has and a smooth painting lacks)."""
    lum = luminance(x01)
    return (lum - _blur(lum)).pow(2).mean(dim=(1, 2, 3))


def high_frequency_share(x01: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,): high-frequency energy / luminance variance: texture independent of contrast."""
    lum = luminance(x01)
    var = (lum - lum.mean(dim=(2, 3), keepdim=True)).pow(2).mean(dim=(1, 2, 3))
    return high_frequency_energy(x01) / (var + _EPS)


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------
class KnownMeaningModel(nn.Module):
    """An image-text model with the interface of ``TextImageEncoder`` whose embeddings are known.

    ``axes``: the named axes it sees (see the module docstring); ``vocabulary``: prompt -> unit
    direction over those axes. ``image_size``: pictures are resized (antialiased bilinear, as the
    trainer hands the tower its views) to this square before the statistics are taken.
    """

    kind = "known"

    def __init__(self, axes: Sequence[str], vocabulary: Mapping[str, Mapping[str, float]], name: str,
                 image_size: int = DEFAULT_IMAGE_SIZE, source_prompt: str = SOURCE_PROMPT):
        super().__init__()
        unknown = [a for a in axes if a not in AXES]
        if unknown or "photo" not in axes:
            raise ValueError(f"axes {list(axes)} must include 'photo' and be among {AXES}")
        if int(image_size) not in TEXTURE_REF and "texture" in axes:
            raise ValueError(f"no texture reference for image_size {image_size}; known: {sorted(TEXTURE_REF)}")
        self.axes = tuple(axes)
        self.name = name
        self.image_size = int(image_size)
        self.source_prompt = normalise_prompt(source_prompt)
        vocab = {normalise_prompt(p): dict(d) for p, d in vocabulary.items()}
        for prompt, direction in vocab.items():
            outside = [a for a in direction if a not in self.axes or a == "photo"]
            if outside:
                raise ValueError(f"prompt {prompt!r} uses axes {outside} that model {name} does not have")
        vocab[self.source_prompt] = {}
        self.vocabulary = vocab
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows .to(device, dtype)

    # -------------------------------------------------------------- interface of TextImageEncoder
    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def embed_dim(self) -> int:
        return len(self.axes)

    def text_vector(self, prompt: str) -> torch.Tensor:
        """The un-normalised text vector of one prompt: photo + TEXT_STRENGTH * its direction."""
        key = normalise_prompt(prompt) if isinstance(prompt, str) else None
        if not key:
            raise ValueError("empty style prompt: write what the style should look like, e.g. \"red\"")
        if key not in self.vocabulary:
            raise UnknownPrompt(f"prompt {prompt!r} is not in the vocabulary of the known-meaning model {self.name} "
                                f"(it only knows prompts whose meaning is written down): use one of "
                                f"{sorted(self.vocabulary)}")
        vec = torch.zeros(len(self.axes))
        vec[self.axes.index("photo")] = 1.0
        for axis, value in self.vocabulary[key].items():
            vec[self.axes.index(axis)] = TEXT_STRENGTH * value
        return vec

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (N, D) L2-normalised known vectors; unknown prompts raise :class:`UnknownPrompt`."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("no prompt given: write what the style should look like, e.g. \"red\"")
        vecs = torch.stack([self.text_vector(p) for p in prompts]).to(self.device)
        return F.normalize(vecs, dim=-1)

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, D) un-normalised axis values (differentiable); see the module docstring."""
        if x01.dim() != 4 or x01.shape[1] != 3:
            raise ValueError(f"encode_image expects (B,3,H,W) images; got {tuple(x01.shape)}")
        x = x01.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        cols = []
        c = chroma(x) * CHROMA_SCALE if any(a in self.axes for a in ("red", "green", "blue")) else None
        for axis in self.axes:
            if axis == "photo":
                cols.append(torch.ones(x.shape[0], device=x.device, dtype=x.dtype))
            elif axis in ("red", "green", "blue"):
                cols.append(c[:, ("red", "green", "blue").index(axis)])
            elif axis == "texture":
                share = high_frequency_share(x)
                cols.append(TEXTURE_SCALE * (torch.log(share + _EPS) - TEXTURE_REF[self.image_size]))
            elif axis == "bright":
                cols.append(TONE_SCALE * (luminance(x).mean(dim=(1, 2, 3)) - 0.45))
            else:  # contrast
                std = luminance(x).flatten(1).std(dim=1, unbiased=False)
                cols.append(TONE_SCALE * torch.log((std + _EPS) / 0.2))
        return torch.stack(cols, dim=-1)

    def encode_image(self, x01: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [0,1] -> (B, D) L2-normalised embeddings, differentiable w.r.t. the pixels."""
        return F.normalize(self.features(x01), dim=-1)

    def direction(self, prompt: str, source_prompt: str | None = None) -> torch.Tensor:
        """The text direction e_t - e_src of a prompt (D,), as the trainer builds it."""
        e = self.encode_text([prompt, source_prompt or self.source_prompt])
        return e[0] - e[1]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, axes={self.axes}, image_size={self.image_size}"


def colour_model(image_size: int = DEFAULT_IMAGE_SIZE) -> KnownMeaningModel:
    """Sees hue / chroma only (no brightness, no texture). Vocabulary: red, green, blue, cyan, magenta,
    yellow, warm, cool, a plain photo."""
    return KnownMeaningModel(FAMILIES["colour"], COLOUR_WORDS, "known-colour", image_size)


def texture_model(image_size: int = DEFAULT_IMAGE_SIZE) -> KnownMeaningModel:
    """Sees the high-frequency share of the luminance only (no colour). Vocabulary: a pencil sketch,
    a smooth painting, a plain photo."""
    return KnownMeaningModel(FAMILIES["texture"], TEXTURE_WORDS, "known-texture", image_size)


def combined_model(image_size: int = DEFAULT_IMAGE_SIZE) -> KnownMeaningModel:
    """Colour and texture axes together; the vocabulary of both plus mixed prompts ("a red pencil sketch")."""
    words = {**COLOUR_WORDS, **TEXTURE_WORDS, **COMBINED_WORDS}
    return KnownMeaningModel(FAMILIES["combined"], words, "known-combined", image_size)


_BUILDERS = {"colour": colour_model, "texture": texture_model, "combined": combined_model}


def known_model(family: str = "combined", image_size: int = DEFAULT_IMAGE_SIZE) -> KnownMeaningModel:
    """A known-meaning model by family name: 'colour', 'texture' or 'combined' ('known-' prefix allowed)."""
    key = family[len("known-"):] if family.startswith("known-") else family
    if key == "color":
        key = "colour"
    if key not in _BUILDERS:
        raise ValueError(f"unknown known-meaning model family {family!r}; choose one of {sorted(_BUILDERS)}")
    return _BUILDERS[key](image_size)
