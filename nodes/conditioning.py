"""Text conditioning nodes: a style prompt against a source prompt, and mixing several (multi-style)."""
from __future__ import annotations

import torch

from .common import CATEGORY, CONDITIONING, TEXT_MODEL, StyleConditioning
from .common import blend as blend_parts

DEFAULT_SOURCE_PROMPT = "a plain photo"  # the paper's source text t_src (Sec. 3.2)


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
            }
        }

    def encode(self, text_model, style_prompt, source_prompt):
        style_prompt, source_prompt = " ".join(style_prompt.split()), " ".join(source_prompt.split())
        if not style_prompt:
            raise ValueError("style_prompt is empty: write what the style should look like, e.g. 'pop art'")
        if not source_prompt:
            raise ValueError(f"source_prompt is empty: use '{DEFAULT_SOURCE_PROMPT}' unless you know better")
        emb = text_model.encode_text([style_prompt, source_prompt]).float().cpu()
        return (StyleConditioning((style_prompt,), (1.0,), source_prompt, _model_name(text_model),
                                  emb[:1].clone(), emb[1].clone()),)


def _model_name(text_model) -> str:
    return str(getattr(text_model, "name", "") or type(text_model).__name__)


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
        a, b = conditioning_a, conditioning_b
        if a.text_model != b.text_model:
            raise ValueError(f"the two conditionings come from different text models ({a.text_model} and "
                             f"{b.text_model}); encode both with the same Load SigLIP/CLIP node")
        if a.source_prompt != b.source_prompt:
            raise ValueError(f"the two conditionings use different source prompts ('{a.source_prompt}' and "
                             f"'{b.source_prompt}'); give both Text Conditioning nodes the same source_prompt")
        rows_a = (list(range(len(a.prompts))), list(a.weights))
        rows_b = (list(range(len(a.prompts), len(a.prompts) + len(b.prompts))), list(b.weights))
        rows, weights = blend_parts(rows_a, rows_b, blend)
        prompts = list(a.prompts) + list(b.prompts)
        emb = torch.cat([a.embeddings, b.embeddings])
        return (StyleConditioning(tuple(prompts[i] for i in rows), tuple(weights), a.source_prompt, a.text_model,
                                  emb[rows].clone(), a.source_embedding),)


NODES = [StyleMambaTextConditioning, StyleMambaConditioningMix]
