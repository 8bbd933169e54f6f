"""Zero-shot styles in ComfyUI: a universal model plus a conditioning (prompt or reference picture) is a style."""
from __future__ import annotations

from .common import CATEGORY, CONDITIONING, STYLE, TEXT_MODEL, UNIVERSAL, image_to_library


class StyleMambaUniversalStyle:
    NODE_ID = "StyleMambaUniversalStyle"
    DISPLAY_NAME = "StyleMamba Universal Style"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("A style for any prompt without training: the universal model's fusion module conditioned on the "
                   "prompt's embedding, and its decoder. Connect a conditioning (Text Conditioning, Reference "
                   "Conditioning), or a reference image with the text model. Stylize, Mix Styles and Save Style take "
                   "the result like a trained style.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (STYLE,)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("The style, for Stylize / Mix Styles / Save Style.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "universal_model": (UNIVERSAL, {"tooltip": "A universal model (Load Universal Model)."}),
            },
            "optional": {
                "conditioning": (CONDITIONING, {"tooltip": "The style: Text Conditioning (any prompt) or Reference "
                                                           "Conditioning, encoded with the model it was trained with "
                                                           "and its source prompt (the default 'a plain photo' "
                                                           "unless it was trained otherwise)."}),
                "text_model": (TEXT_MODEL, {"tooltip": "With reference_image: the SigLIP/CLIP the universal model "
                                                       "was trained with."}),
                "reference_image": ("IMAGE", {"tooltip": "Instead of a conditioning: a picture whose style to take "
                                                         "(compared with the universal model's training photos)."}),
            },
        }

    def make(self, universal_model, conditioning=None, text_model=None, reference_image=None):
        from ..stylemamba.universal import style_from_universal, universal_direction

        if conditioning is not None and reference_image is not None:
            raise ValueError("connect either a conditioning or a reference image to Universal Style, not both "
                             "(mix two styles with Mix Styles)")
        if conditioning is None:
            if reference_image is None:
                raise ValueError("Universal Style needs a style: connect a conditioning (Text Conditioning with your "
                                 "prompt) or a reference image together with the text model")
            if text_model is None:
                raise ValueError("a reference image is encoded by the image tower: connect the text model (Load "
                                 "SigLIP/CLIP) the universal model was trained with")
            conditioning = universal_direction(universal_model, text_model,
                                               reference=image_to_library(reference_image)[:, :3])
        return (style_from_universal(universal_model, conditioning),)


NODES = [StyleMambaUniversalStyle]
