"""Applying styles: stylise images (any size, batches, video frames, masks), mix styles, latents."""
from __future__ import annotations

from ..stylemamba.mixing import blend as blend_parts
from . import caches
from . import comfy_helpers as ch
from .common import (
    CATEGORY,
    OOM_NAMES,
    STYLE,
    StyleBlend,
    blend_mode,
    image_to_comfy,
    image_to_library,
    mask_for_images,
    style_parts,
)

LATENT_BATCH = 4  # latents / images per VAE pass in the latent nodes


class StyleMambaStylize:
    NODE_ID = "StyleMambaStylize"
    DISPLAY_NAME = "StyleMamba Stylize"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Applies a trained style (or a mix) to an image batch in one forward pass per image: VAE encoder, "
                   "style fusion, trained decoder. Any size (large images go through the VAE in tiles), batches and "
                   "video frames; an optional mask limits the style to a region.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The stylised images, same size and batch as the input.",)
    FUNCTION = "stylize"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "style": (STYLE, {"tooltip": "A style from Train, Load Style or Mix Styles."}),
                "vae": ("VAE", {"tooltip": "The VAE the style was trained with (its decoder is the base of the style; "
                                           "another VAE is refused)."}),
                "images": ("IMAGE", {"tooltip": "Images or video frames (a batch) to stylise, any size."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "0 = the VAE's plain reconstruction, 1 = the full style."}),
                "tile_size": ("INT", {"default": 1024, "min": 256, "max": 8192, "step": 64,
                                      "tooltip": "Images larger than this (pixels per side) go through the VAE in "
                                                 "overlapping tiles to save memory; the style stays global."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 256,
                                       "tooltip": "Images per forward pass (lower it for long videos on small GPUs)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional: where to stylise (1 = style, 0 = keep the original). Resized "
                                             "to the image; one mask for all, or one per image."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def stylize(self, style, vae, images, strength, tile_size, batch_size, mask=None, unique_id=None, prompt=None):
        from ..stylemamba.errors import memory_kind, stylizing_out_of_memory
        from ..stylemamba.stylize import memory_estimate, stylize_images

        styles, weights = style_parts(style)
        x = image_to_library(images, copy=False)
        b, _, h, w = x.shape
        m = mask_for_images(mask, b, h, w)
        activations = memory_estimate(min(int(batch_size), b), h, w, int(tile_size))
        # ask ComfyUI to make room (it unloads cached models): the style's decoder copy and the activations
        sdvae = ch.prepare_vae(vae, memory_required=activations, name=ch.linked_file_name(prompt, unique_id, "vae"))
        progress = ch.Progress(b, unique_id)
        if m is not None and float(m.max()) == 0.0:  # Load Image's MASK of an unpainted picture: said on the node
            progress.text("the mask is empty, so nothing is stylised: paint the area in the Mask Editor, or "
                          "disconnect mask to stylise the whole image")
        try:
            model, _ = caches.style_model(sdvae, vae, styles, weights, float(strength), activations,
                                          blend_mode(style))
            out = stylize_images(x, sdvae, model, mask=m, tile_size=int(tile_size), batch_size=int(batch_size),
                                 on_batch=lambda done, total: progress.update(done))
        except Exception as exc:
            if ch.is_out_of_memory(exc):
                raise stylizing_out_of_memory(f"{b} image(s) of {w}x{h}", min(int(batch_size), b), tile_size,
                                              OOM_NAMES, memory_kind(exc), largest_side=max(h, w)) from exc
            raise
        return (image_to_comfy(out),)


class StyleMambaMixStyles:
    NODE_ID = "StyleMambaMixStyles"
    DISPLAY_NAME = "StyleMamba Mix Styles"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Blends two trained styles; Stylize applies the blend. By default the styles' pictures are "
                   "averaged (a 50/50 mix lands halfway between them); blend_mode 'weights' is the 0.1.0 blend of "
                   "fusion outputs and decoder weights (one decoder pass, but not halfway). Mixes can be mixed "
                   "again for three or more styles.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (STYLE,)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("The blend, for Stylize or Stylize Latent.",)
    FUNCTION = "mix"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "style_a": (STYLE, {"tooltip": "First style (or mix)."}),
                "style_b": (STYLE, {"tooltip": "Second style (or mix), trained with the same VAE."}),
                "blend": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "Share of style B: 0 = only A, 0.5 = both equally, 1 = only B."}),
            },
            "optional": {
                "blend_mode": (["outputs", "weights"], {
                    "default": "outputs",
                    "tooltip": "outputs: average the styles' pictures (a 50/50 mix lands halfway; one decoder pass "
                               "per style). weights: the 0.1.0 mix of fusion outputs and decoder weights (one pass, "
                               "not halfway). Applies to every style in this mix, mixes fed in included."}),
            },
        }

    def mix(self, style_a, style_b, blend, blend_mode=None):
        from ..stylemamba.style_model import check_blend

        styles, weights = blend_parts(style_parts(style_a), style_parts(style_b), float(blend))
        return (StyleBlend(tuple(styles), tuple(weights), check_blend(blend_mode or "outputs")),)


class StyleMambaVAEEncode:
    NODE_ID = "StyleMambaVAEEncode"
    DISPLAY_NAME = "StyleMamba VAE Encode"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("The frozen encoder F_e of StyleMamba: images -> LATENT with ComfyUI's VAE (posterior mean, "
                   "ComfyUI's unscaled latent convention; sides cropped to a multiple of 8 like VAE Encode). "
                   "Feed it to Stylize Latent.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Latents of the images (1/8 of the size).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "A Stable Diffusion VAE (Load VAE or a checkpoint's VAE)."}),
                "images": ("IMAGE", {"tooltip": "Images to encode (sides are cropped to a multiple of 8)."}),
            }
        }

    def encode(self, vae, images):
        from ..stylemamba.stylize import encode_latents

        return ({"samples": encode_latents(image_to_library(images), ch.prepare_vae(vae), LATENT_BATCH)},)


class StyleMambaStylizeLatent:
    NODE_ID = "StyleMambaStylizeLatent"
    DISPLAY_NAME = "StyleMamba Stylize Latent"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Decodes a LATENT in a style: style fusion + the style's decoder instead of VAE Decode. Works on "
                   "StyleMamba VAE Encode / VAE Encode latents and on a sampler's output (generate, then decode "
                   "stylised), for the VAE the style was trained with.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The stylised images (8x the latent size).",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "style": (STYLE, {"tooltip": "A style from Train, Load Style or Mix Styles."}),
                "vae": ("VAE", {"tooltip": "The VAE the style was trained with."}),
                "samples": ("LATENT", {"tooltip": "Latents of that VAE (ComfyUI's usual unscaled latents)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "0 = plain VAE decode, 1 = the full style."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def decode(self, style, vae, samples, strength, unique_id=None, prompt=None):
        from ..stylemamba.errors import memory_kind, stylizing_out_of_memory
        from ..stylemamba.stylize import stylize_latents

        z = samples["samples"] if isinstance(samples, dict) else samples
        styles, weights = style_parts(style)
        sdvae = ch.prepare_vae(vae, name=ch.linked_file_name(prompt, unique_id, "vae"))
        progress = ch.Progress(z.shape[0], unique_id)
        try:
            model, _ = caches.style_model(sdvae, vae, styles, weights, float(strength), blend=blend_mode(style))
            out = stylize_latents(z, sdvae, model, batch_size=LATENT_BATCH,
                                  on_batch=lambda done, total: progress.update(done))
        except Exception as exc:
            if ch.is_out_of_memory(exc):
                raise stylizing_out_of_memory(f"latents of shape {tuple(z.shape)}", LATENT_BATCH, 0,
                                              {"batch_size": None, "tile_size": None}, memory_kind(exc)) from exc
            raise
        return (image_to_comfy(out),)


NODES = [StyleMambaStylize, StyleMambaMixStyles, StyleMambaVAEEncode, StyleMambaStylizeLatent]
