"""Text conditioning nodes: a style prompt against a source prompt, and mixing several (multi-style).

The conditioning they output IS the library's :class:`~stylemamba.direction.TextDirection` (encoded once,
here); the Train node hands it to training as it is.
"""
from __future__ import annotations

from ..stylemamba.direction import DEFAULT_SOURCE_PROMPT, TextDirection
from . import comfy_helpers as ch
from .common import CATEGORY, CONDITIONING, TEXT_MODEL, image_to_library


class StyleMambaTextConditioning:
    NODE_ID = "StyleMambaTextConditioning"
    DISPLAY_NAME = "StyleMamba Text Conditioning"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Encodes the style prompt and the source prompt with the SigLIP/CLIP text tower. Training "
                   "pushes the image along the direction from the source text to the style text (paper Eq. 2).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The style direction for Train (mix several with Conditioning Mix).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_model": (TEXT_MODEL, {"tooltip": "The SigLIP/CLIP model (Load SigLIP/CLIP); use the same one "
                                                       "for Train."}),
                "style_prompt": ("STRING", {
                    "default": "a watercolor painting with soft pastel colors", "multiline": True,
                    "tooltip": "What the style should look like, e.g. \"Van Gogh's starry night\" or \"pop art\". "
                               "One style per node; mix several with Conditioning Mix."}),
                "source_prompt": ("STRING", {
                    "default": DEFAULT_SOURCE_PROMPT, "multiline": False,
                    "tooltip": "Describes the unstylised content (the paper uses 'a plain photo'). The style is "
                               "learned as the difference style_prompt - source_prompt."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def encode(self, text_model, style_prompt, source_prompt, unique_id=None):
        cut_prompts = getattr(text_model, "cut_prompts", lambda prompts: [])  # image-text models without a tokenizer
        for _, cut in cut_prompts([" ".join(style_prompt.split())]):  # the text tower never sees it
            shown = cut if len(cut) <= 60 else "..." + cut[-57:].lstrip()
            ch.Progress(1, unique_id).text(f"prompt too long: its end '{shown}' is ignored (SigLIP reads 64 "
                                           "tokens, CLIP 77); shorten it")
        return (TextDirection.encode(text_model, [style_prompt], source_prompt=source_prompt),)


class StyleMambaConditioningMix:
    NODE_ID = "StyleMambaConditioningMix"
    DISPLAY_NAME = "StyleMamba Conditioning Mix"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Mixes two style conditionings with a weight: training then follows the weighted sum of their "
                   "text embeddings (the paper's multiple-style transfer). Mixes can be mixed again.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The mixed style direction for Train.",)
    FUNCTION = "mix"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning_a": (CONDITIONING, {"tooltip": "First style (Text Conditioning or another mix)."}),
                "conditioning_b": (CONDITIONING, {"tooltip": "Second style; same text model and source prompt as A."}),
                "blend": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "Share of style B: 0 = only A, 0.5 = both equally, 1 = only B."}),
            }
        }

    def mix(self, conditioning_a, conditioning_b, blend):
        return (TextDirection.mix(conditioning_a, conditioning_b, float(blend)),)


class StyleMambaReferenceConditioning:
    NODE_ID = "StyleMambaReferenceConditioning"
    DISPLAY_NAME = "StyleMamba Reference Conditioning"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("A style from a reference picture instead of a prompt: the direction is the image tower's "
                   "embedding of the reference minus that of the source photos (connect the images you train on). "
                   "For Train, Conditioning Mix or Universal Style, like Text Conditioning.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The style direction of the reference picture.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_model": (TEXT_MODEL, {"tooltip": "The SigLIP/CLIP model (Load SigLIP/CLIP); use the same one "
                                                       "for Train."}),
                "reference_image": ("IMAGE", {"tooltip": "The picture whose style to take (a batch: their average)."}),
                "source_images": ("IMAGE", {"tooltip": "Plain photos the reference is compared with: the content "
                                                       "images you train on (what differs from them is the style)."}),
                "source_prompt": ("STRING", {
                    "default": DEFAULT_SOURCE_PROMPT, "multiline": False,
                    "tooltip": "The source text the style embedding is placed against (as in Text Conditioning)."}),
            }
        }

    def encode(self, text_model, reference_image, source_images, source_prompt):
        refs, src = image_to_library(reference_image)[:, :3], image_to_library(source_images)[:, :3]
        return (TextDirection.from_reference(text_model, refs, source_images=src, source_prompt=source_prompt),)


NODES = [StyleMambaTextConditioning, StyleMambaConditioningMix, StyleMambaReferenceConditioning]
