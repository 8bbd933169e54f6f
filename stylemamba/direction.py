"""The one contract from text to training: where a style should move images in embedding space.

A :class:`TextDirection` holds the style prompt(s) with their weights, the source prompt, each
prompt's embedding and the source's, and the name of the image-text model that encoded them (paper
Sec. 3.2: ``e_t``, ``e_src``, the direction ``e_t - e_src`` of Eq. 2). The prompts are encoded ONCE
(:meth:`TextDirection.encode`); the Text Conditioning / Conditioning Mix nodes output this record,
``train_style`` consumes it as it is, and the style file records its :meth:`metadata`.

The trainer reads only :attr:`e_t` (the fusion module's condition), :attr:`e_src`, :attr:`text_model`
and :meth:`metadata`; a direction taken from a reference picture's image embedding (instead of a
prompt's) is another constructor filling the same fields, with no change to the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .encoders import ImageTextModel, check_image_text_model, model_name
from .image_io import check_pixels
from .mixing import blend as blend_parts
from .mixing import normalise_weights

DEFAULT_SOURCE_PROMPT = "a plain photo"  # the paper's source text t_src (Sec. 3.2)


def _clean(prompt: Any, what: str, example: str) -> str:
    text = " ".join(prompt.split()) if isinstance(prompt, str) else ""
    if not text:
        raise ValueError(f"empty {what}: {example}")
    return text


@dataclass(frozen=True, eq=False)
class TextDirection:
    """Style prompt(s) with weights against a source prompt, encoded by one image-text model.

    ``weights`` are normalised to sum 1; ``embeddings`` ``(N, D)`` and ``source_embedding`` ``(D,)``
    are the L2-normalised text embeddings, kept on the CPU in fp32 (moved where they are used).
    """

    prompts: tuple[str, ...]
    weights: tuple[float, ...]
    source_prompt: str
    embeddings: torch.Tensor
    source_embedding: torch.Tensor
    text_model: str

    def __post_init__(self):
        prompts = tuple(self.prompts)
        weights = normalise_weights(self.weights, len(prompts), "prompt")
        emb = self.embeddings.detach().float().cpu()
        src = self.source_embedding.detach().float().cpu()
        if emb.dim() != 2 or emb.shape[0] != len(prompts) or src.shape != emb.shape[1:]:
            raise ValueError(f"a TextDirection needs one (D,) embedding per prompt ({len(prompts)}) and a (D,) source "
                             f"embedding; got {tuple(emb.shape)} and {tuple(src.shape)}")
        for name, value in (("prompts", prompts), ("weights", weights), ("embeddings", emb), ("source_embedding", src)):
            object.__setattr__(self, name, value)

    @classmethod
    def encode(cls, text_model: ImageTextModel, prompts: str | Sequence[str], weights: Sequence[float] | None = None,
               source_prompt: str = DEFAULT_SOURCE_PROMPT) -> TextDirection:
        """Encode the prompt(s) and the source prompt with ``text_model`` in one call.

        Runs of white space are collapsed; empty prompts and bad weights are refused before encoding.
        ``weights``: one per prompt (several prompts = the paper's multiple-style transfer); default equal.
        """
        check_image_text_model(text_model)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no style prompt given: write what the style should look like, e.g. \"pop art\"")
        prompts = [_clean(p, "style prompt", "write what the style should look like, e.g. \"Van Gogh's starry "
                                             "night\" or \"pop art\"") for p in prompts]
        source = _clean(source_prompt, "source prompt", f"use '{DEFAULT_SOURCE_PROMPT}' (the paper's) unless you "
                                                        "know better")
        weights = normalise_weights(weights, len(prompts), "prompt")
        with torch.no_grad():
            emb = text_model.encode_text(prompts + [source]).float().cpu()
        return cls(tuple(prompts), weights, source, emb[:-1].clone(), emb[-1].clone(), model_name(text_model))

    @classmethod
    def from_reference(cls, model: ImageTextModel, references: torch.Tensor, source_images: torch.Tensor | None = None,
                       source_image_embedding: torch.Tensor | None = None,
                       source_prompt: str = DEFAULT_SOURCE_PROMPT, name: str = "reference image") -> TextDirection:
        """A style direction from reference picture(s) (B,3,H,W in [0,1]) instead of a prompt.

        The direction is image minus image: ``d = F_I(references) - F_I(source photos)`` (mean L2-normalised
        embeddings), the photos being ``source_images`` (per-style training: the content images) or a
        stored ``source_image_embedding`` (a universal model's training photos). Not ``F_I(reference) -
        e_src``: in SigLIP/CLIP every image embedding lies far from every text embedding (the "modality
        gap"), so that difference is mostly the same image-vs-text offset for any reference; the photos
        share the reference's modality, so what differs between them is the style. The fusion module is
        conditioned on text embeddings (the universal model never saw anything else), so the record's
        ``e_t`` is ``normalise(e_src + d)``, the point of the text sphere whose offset from the source
        prompt is ``d``; the losses then follow ``e_t - e_src``, as they do for a prompt.
        """
        check_image_text_model(model)
        if (source_images is None) == (source_image_embedding is None):
            raise ValueError("give the source photos the reference is compared with (the content images), or a "
                             "universal model's source image embedding: exactly one of the two")
        with torch.no_grad():
            e_ref = image_embedding(model, references, "reference image")
            e_img = image_embedding(model, source_images, "source image") if source_images is not None else \
                F.normalize(source_image_embedding.detach().float().cpu().reshape(-1), dim=-1)
            source = _clean(source_prompt, "source prompt", f"use '{DEFAULT_SOURCE_PROMPT}' unless you know better")
            e_src = model.encode_text([source]).float().cpu()[0]
        if e_img.shape != e_ref.shape:
            raise ValueError(f"the source image embedding has {e_img.numel()} values but '{model_name(model)}' gives "
                             f"{e_ref.numel()}: it comes from another image-text model")
        e_t = F.normalize(e_src + (e_ref - e_img), dim=-1)
        label = " ".join(str(name).split()) or "reference image"
        return cls((label,), (1.0,), source, e_t[None].clone(), e_src.clone(), model_name(model))

    @property
    def e_t(self) -> torch.Tensor:
        """The style embedding ``(D,)``: the weighted sum of the prompts' embeddings, L2-normalised."""
        w = torch.tensor(self.weights, dtype=self.embeddings.dtype)
        return F.normalize((w[:, None] * self.embeddings).sum(0), dim=-1)

    @property
    def e_src(self) -> torch.Tensor:
        """The source embedding ``(D,)``."""
        return self.source_embedding

    @property
    def direction(self) -> torch.Tensor:
        """``e_t - e_src`` ``(D,)``, not normalised: the cosine losses normalise it, Eq. 3-4 need its length."""
        return self.e_t - self.e_src

    @staticmethod
    def mix(a: TextDirection, b: TextDirection, blend: float) -> TextDirection:
        """``a`` and ``b`` mixed: a's weights times ``1 - blend``, b's times ``blend`` (prompts are concatenated)."""
        if a.text_model != b.text_model:
            raise ValueError(f"the two conditionings come from different text models ({a.text_model} and "
                             f"{b.text_model}); encode both with the same model (the same Load SigLIP/CLIP node)")
        if a.source_prompt != b.source_prompt:
            raise ValueError(f"the two conditionings use different source prompts ('{a.source_prompt}' and "
                             f"'{b.source_prompt}'); encode both with the same source prompt")
        n = len(a.prompts)
        rows, weights = blend_parts((range(n), a.weights), (range(n, n + len(b.prompts)), b.weights), blend)
        prompts = a.prompts + b.prompts
        emb = torch.cat([a.embeddings, b.embeddings])
        return TextDirection(tuple(prompts[i] for i in rows), tuple(weights), a.source_prompt, emb[rows].clone(),
                             a.source_embedding, a.text_model)

    def check_text_model(self, text_model: ImageTextModel) -> None:
        """Refuse to train with a model other than the one that encoded this direction (its space differs)."""
        name = model_name(text_model)
        if name != self.text_model:
            raise ValueError(f"the conditioning was encoded with '{self.text_model}' but training uses the text model "
                             f"'{name}': encode the prompts with the model you train with (in ComfyUI: connect the "
                             "same Load SigLIP/CLIP node to both)")
        dim = int(text_model.embed_dim)
        if dim != self.embeddings.shape[1]:
            raise ValueError(f"the conditioning has {self.embeddings.shape[1]}-d embeddings but the text model "
                             f"'{name}' gives {dim}-d ones: encode the prompts again with it")

    def describe(self) -> str:
        parts = [f"{w:.2f} x '{p}'" for p, w in zip(self.prompts, self.weights)]
        return " + ".join(parts) + f" (source '{self.source_prompt}', {self.text_model})"

    def metadata(self) -> dict[str, Any]:
        """What a style file records about the direction it was trained on."""
        return {"prompts": list(self.prompts), "prompt_weights": list(self.weights),
                "source_prompt": self.source_prompt, "text_model": self.text_model}


def image_embedding(model: ImageTextModel, images: torch.Tensor, what: str = "image") -> torch.Tensor:
    """The mean of the L2-normalised image embeddings of ``images`` (B,3,H,W) in [0,1], normalised: (D,) on the CPU."""
    if not torch.is_tensor(images) or images.dim() not in (3, 4) or images.shape[-3] not in (1, 3, 4):
        raise ValueError(f"the {what} must be an image tensor (B,3,H,W) in [0,1]; got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    x = images if images.dim() == 4 else images[None]
    x = x[:, :3] if x.shape[1] != 1 else x.expand(-1, 3, -1, -1)
    if x.shape[-1] < 8 or x.shape[-2] < 8:
        raise ValueError(f"the {what} is {x.shape[-1]}x{x.shape[-2]} pixels; give at least 8x8")
    check_pixels(x, what)  # 0-255 pixels were clamped to a white picture, NaN ones made a NaN style, without a word
    param = next(iter(getattr(model, "parameters", lambda: iter(()))()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    embs = torch.cat([model.encode_image(x[i:i + 8].to(model.device, dtype).clamp(0, 1)).float().cpu()
                      for i in range(0, x.shape[0], 8)])
    return F.normalize(F.normalize(embs, dim=-1).mean(0), dim=-1)
