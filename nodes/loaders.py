"""Loader and saver nodes: SigLIP/CLIP text-image model, perceptual networks, style files."""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch

from . import comfy_helpers as ch
from .common import CATEGORY, PERCEPTUAL, STYLE, TEXT_MODEL, UNIVERSAL, PerceptualNets, style_parts

log = logging.getLogger("stylemamba")

DEFAULT_SIGLIP_ID = "google/siglip-base-patch16-224"
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What a model folder needs (weights as safetensors only; tokenizer files of SigLIP or CLIP).
_HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]
NONE = "none"


def _offline_message(hf_id: str, folder: Path, why: str) -> str:
    return (f"could not download '{hf_id}' ({why}). Download every file of https://huggingface.co/{hf_id} "
            f"(config.json, model.safetensors, tokenizer and preprocessor files) into {folder}/ "
            f"on a machine with internet, copy that folder here, then pick '{folder.name}' in model_name "
            "and clear hf_id.")


# Written into each folder a download fills: which repository it holds. A folder without it (an older version's
# download, or the user's own copy) is never downloaded into.
HF_ID_RECORD = ".stylemamba-hf-id"


def download_folder(hf_id: str) -> Path:
    """Where ``hf_id`` goes in models/siglip: the repository's name, as before, or ``owner--name`` when that folder
    holds another repository or files that no download of ours put there (never downloaded into)."""
    root = ch.save_folder("siglip")
    owner, name = hf_id.split("/")
    candidates = (root / name, root / f"{owner}--{name}")
    for folder in candidates:
        recorded = _recorded_id(folder)
        if not folder.exists() or recorded == hf_id:
            return folder
        if recorded is None and _is_complete(folder):
            log.warning("hf_id %s: using %s, whose files say nothing of the repository they came from (an earlier "
                        "version's download); delete that folder if it holds another model", hf_id, folder)
            return folder
    raise RuntimeError(f"hf_id '{hf_id}': {candidates[0]} and {candidates[1]} hold files of another model or an "
                       "unfinished copy, which a download would overwrite; move them, or pick the model in "
                       "model_name and clear hf_id")


def _recorded_id(folder: Path) -> str | None:
    try:
        return (folder / HF_ID_RECORD).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def download_text_model(hf_id: str, progress: ch.Progress | None = None) -> Path:
    """Hugging Face id -> a folder in models/siglip (downloaded once; reused when already there)."""
    hf_id = hf_id.strip()
    if not _HF_ID.match(hf_id) or ".." in hf_id:
        raise ValueError(f"hf_id '{hf_id}' is not a Hugging Face model id like {DEFAULT_SIGLIP_ID}")
    folder = download_folder(hf_id)
    if _is_complete(folder):
        return folder
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ImportError("downloading needs huggingface_hub: pip install huggingface_hub") from exc
    tqdm_class = download_progress(progress) if progress is not None else None
    log.info("downloading %s into %s", hf_id, folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / HF_ID_RECORD).write_text(hf_id + "\n", encoding="utf-8")  # first: a stopped download is resumed
        snapshot_download(repo_id=hf_id, local_dir=str(folder), allow_patterns=_HF_PATTERNS, tqdm_class=tqdm_class)
    except Exception as exc:  # offline mode, no network, unknown repo, gated repo ...
        if ch.is_interrupt(exc):  # Cancel pressed while downloading: ComfyUI shows it as cancelled
            raise
        raise RuntimeError(_offline_message(hf_id, folder, f"{type(exc).__name__}: {exc}")) from exc
    if not (folder / "config.json").is_file():
        raise RuntimeError(_offline_message(hf_id, folder, "the download has no config.json"))
    return folder


def download_progress(progress: ch.Progress) -> type:
    """A tqdm class that shows snapshot_download's progress on the node.

    Newer huggingface_hub versions open three bars (bytes received, bytes written, files); the node follows the
    one with the largest total (bytes when there are byte bars, else files), so it does not jump between them.
    It takes the keywords hub versions pass to their own bars (``name``), which a plain tqdm refuses with an
    error that would read as a failed download."""
    from tqdm.auto import tqdm

    bars: list[tqdm] = []

    class _ComfyTqdm(tqdm):
        def __init__(self, *args, name: str | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

        def update(self, n=1):
            out = super().update(n)
            shown = max(bars, key=lambda bar: bar.total or 0)  # ties: the first bar opened
            if shown.total:
                progress.total = int(shown.total)
                progress.update(min(int(shown.n), progress.total))
            return out

    return _ComfyTqdm


class StyleMambaLoadTextModel:
    NODE_ID = "StyleMambaLoadTextModel"
    DISPLAY_NAME = "StyleMamba Load SigLIP/CLIP"
    REQUIRED_PACKAGES = ("transformers",)
    DESCRIPTION = ("Loads the frozen image-text model that guides training (SigLIP as in the paper, or CLIP). "
                   "Models are folders in ComfyUI/models/siglip/ (a Hugging Face snapshot: config.json, "
                   "model.safetensors, tokenizer and preprocessor files).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (TEXT_MODEL,)
    RETURN_NAMES = ("text_model",)
    OUTPUT_TOOLTIPS = ("The text and image towers (moved to the GPU by Train and kept there under ComfyUI's model "
                       "management, which moves them off when another model needs the room).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (ch.list_model_dirs("siglip"), {
                    "tooltip": "A model folder in ComfyUI/models/siglip/ (SigLIP or CLIP, chosen by its config.json), "
                               "e.g. siglip-base-patch16-224 downloaded from google/siglip-base-patch16-224."}),
                "hf_id": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Optional Hugging Face id (e.g. google/siglip-base-patch16-224). When set it is used "
                               "instead of model_name: downloaded once into models/siglip/<name> (<owner>--<name> "
                               "when that folder holds another model; needs internet)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name, hf_id):
        # Replaces ComfyUI's combo check so that an hf_id works while models/siglip is still empty.
        if hf_id and hf_id.strip():
            ok = _HF_ID.match(hf_id.strip()) and ".." not in hf_id
            return True if ok else f"hf_id '{hf_id}' is not a Hugging Face id like {DEFAULT_SIGLIP_ID}"
        if model_name in ch.list_model_dirs("siglip"):
            return True
        where = ", ".join(ch.folder_paths_for("siglip"))
        return (f"SigLIP/CLIP folder '{model_name}' not found in {where}. Download {DEFAULT_SIGLIP_ID} "
                f"(all files) into models/siglip/siglip-base-patch16-224/ and pick it, or set hf_id.")

    def load(self, model_name, hf_id="", unique_id=None):
        if hf_id and hf_id.strip():
            folder = download_text_model(hf_id, ch.Progress(1, unique_id))
        else:
            folder = ch.resolve("siglip", model_name, is_dir=True)
        return (load_text_model_folder(folder),)


def load_text_model_folder(folder: Path):
    """Load a SigLIP/CLIP folder on the CPU in fp32, outside inference mode (its tensors must support autograd)."""
    from ..stylemamba.encoders import load_text_image_encoder

    with torch.inference_mode(False):
        try:
            return load_text_image_encoder(str(folder), device=ch.offload_device(), dtype=torch.float32)
        except ImportError as exc:
            raise ImportError(f"loading {folder.name} needs a missing package: {' '.join(str(exc).split())} SigLIP's "
                              "tokenizer needs sentencepiece and protobuf: pip install sentencepiece protobuf") from exc


class StyleMambaLoadPerceptual:
    NODE_ID = "StyleMambaLoadPerceptual"
    DISPLAY_NAME = "StyleMamba Load VGG/LPIPS"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Loads the frozen networks of the content losses from ComfyUI/models/perceptual/: VGG19 features "
                   "(VGG content loss) and the VGG16/AlexNet backbone of LPIPS, as .safetensors with torchvision's "
                   "'features.N.weight' keys. 'none' skips that loss.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (PERCEPTUAL,)
    RETURN_NAMES = ("perceptual",)
    OUTPUT_TOOLTIPS = ("VGG19 and/or LPIPS for the Train node's content losses.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = [NONE] + ch.list_files("perceptual")
        return {
            "required": {
                "vgg19": (files, {
                    "default": NONE,
                    "tooltip": "torchvision VGG19 'features' weights (.safetensors) for the VGG content loss "
                               "(conv4_2 + conv5_2, as CLIPstyler). 'none' skips the VGG loss."}),
                "lpips_backbone": (files, {
                    "default": NONE,
                    "tooltip": "torchvision VGG16 (lpips_net=vgg) or AlexNet (lpips_net=alex) 'features' weights "
                               "(.safetensors) for LPIPS; its linear heads ship with the lpips package. "
                               "'none' skips the LPIPS loss."}),
                "lpips_net": (["vgg", "alex"], {
                    "default": "vgg", "tooltip": "Which LPIPS network the backbone file belongs to."}),
            }
        }

    def load(self, vgg19, lpips_backbone, lpips_net):
        from ..stylemamba.perceptual import LPIPSLoss, VGGFeatures

        nets = PerceptualNets()
        with torch.inference_mode(False):
            if vgg19 != NONE:
                nets.vgg = VGGFeatures.from_safetensors(ch.resolve("perceptual", vgg19))
                nets.names["vgg"] = vgg19
            if lpips_backbone != NONE:
                try:
                    nets.lpips = LPIPSLoss(net=lpips_net, backbone_path=ch.resolve("perceptual", lpips_backbone))
                except ImportError as exc:
                    raise ImportError("the LPIPS loss needs the lpips package: pip install lpips "
                                      "(or set lpips_backbone to none)") from exc
                nets.names["lpips"] = f"{lpips_net}:{lpips_backbone}"
        if nets.vgg is None and nets.lpips is None:
            log.warning("no perceptual network chosen; the VGG and LPIPS content losses will be skipped")
        return (nets,)


class StyleMambaLoadStyle:
    NODE_ID = "StyleMambaLoadStyle"
    DISPLAY_NAME = "StyleMamba Load Style"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = "Loads a trained style (.safetensors) from ComfyUI/models/stylemamba/."
    CATEGORY = CATEGORY
    RETURN_TYPES = (STYLE, "STRING")
    RETURN_NAMES = ("style", "info")
    OUTPUT_TOOLTIPS = ("The style, for Stylize / Mix Styles.",
                       "What the file says about itself: prompts, training steps, text model, base VAE.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "style_name": (ch.list_files("stylemamba"), {
                    "tooltip": "A style file in ComfyUI/models/stylemamba/ (written by Save Style, or shared by "
                               "someone who trained it with the same VAE)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, style_name):
        # Replaces ComfyUI's bare "Value not in list ... not in []" with where styles go and how to get one.
        return style_file_missing(style_name, "style", "train one with Train Style -> Save Style")

    @classmethod
    def IS_CHANGED(cls, style_name):
        try:
            st = ch.resolve("stylemamba", style_name).stat()
            return f"{st.st_mtime_ns}-{st.st_size}"
        except Exception:
            return ""

    def load(self, style_name):
        from ..stylemamba.style_file import load_style, style_summary

        style = load_style(ch.resolve("stylemamba", style_name))  # StyleFileError says what is wrong
        return (style, style_summary(style.metadata))


class StyleMambaLoadUniversalModel:
    NODE_ID = "StyleMambaLoadUniversalModel"
    DISPLAY_NAME = "StyleMamba Load Universal Model"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Loads a universal model (.safetensors from ComfyUI/models/stylemamba/, trained with "
                   "`python -m stylemamba train-universal`): one fusion module and decoder for ANY prompt or "
                   "reference image, no training. Turn it into a style with Universal Style.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (UNIVERSAL, "STRING")
    RETURN_NAMES = ("universal_model", "info")
    OUTPUT_TOOLTIPS = ("The universal model, for Universal Style.",
                       "What the file says about itself: prompt bank, text model to encode prompts with, base VAE.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (ch.list_files("stylemamba"), {
                    "tooltip": "A universal model file in ComfyUI/models/stylemamba/ (style files there are refused "
                               "with a note: load those with Load Style)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return style_file_missing(model_name, "universal model", "train one with python -m stylemamba train-universal")

    @classmethod
    def IS_CHANGED(cls, model_name):
        return StyleMambaLoadStyle.IS_CHANGED(model_name)

    def load(self, model_name):
        from ..stylemamba.style_file import load_universal, universal_summary

        model = load_universal(ch.resolve("stylemamba", model_name))  # StyleFileError says what is wrong
        return (model, universal_summary(model.metadata))


class StyleMambaSaveStyle:
    NODE_ID = "StyleMambaSaveStyle"
    DISPLAY_NAME = "StyleMamba Save Style"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Saves a trained style as .safetensors (with its prompts and recipe as metadata) into "
                   "ComfyUI/models/stylemamba/ (or the first stylemamba folder of extra_model_paths.yaml); never "
                   "overwrites: a counter is added to the name, skipping names any style folder has. A style "
                   "already saved (same weights) is not written again: its file name is returned.")
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("style_name",)
    OUTPUT_TOOLTIPS = ("The saved file name (or that of the identical style already saved), as Load Style lists it.",)
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "style": (STYLE, {"tooltip": "The trained style (from Train). A mix of styles cannot be saved as one "
                                             "file: save its parts."}),
                "filename_prefix": ("STRING", {
                    "default": "StyleMamba",
                    "tooltip": "Name of the file; '_00001' etc. is appended. Letters and digits of any language, "
                               "spaces and . _ - ( ) [ ] + , & ' ! # @ = ~ are kept; every other character (: * ? "
                               "\" < > | % ; $, emoji) becomes '_', and a folder joins the name (monet/v1 -> "
                               "monet_v1)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def save(self, style, filename_prefix, unique_id=None):
        from ..stylemamba.style_file import safe_style_filename, save_style

        styles, _ = style_parts(style)
        if len(styles) != 1:
            raise ValueError("this is a mix of styles; save each style before mixing (a mix is not one file)")
        style = styles[0]
        folder = ch.save_folder("stylemamba")
        same = find_identical_style(style.digest())
        if same is not None:  # re-queueing a workflow must not write the same 100+ MB again
            message = f"identical style already saved as {same}; nothing written"
            log.info("%s", message)
            ch.Progress(1, unique_id).text(message)
            return {"ui": {"text": [message]}, "result": (same,)}
        stem = safe_style_filename(filename_prefix)[: -len(".safetensors")]
        path = next_free_path([Path(f) for f in ch.folder_paths_for("stylemamba")], stem)  # saved in the first
        meta = dict(style.metadata)
        meta["name"] = path.stem  # the file's own name (counter included): two saved styles differ
        info = save_style(dataclasses.replace(style, metadata=meta), path)
        message = f"saved {path.name} ({info['bytes'] / 1e6:.1f} MB) in {folder}"
        log.info("%s", message)
        ch.Progress(1, unique_id).text(message)
        return {"ui": {"text": [message]}, "result": (path.name,)}


def find_identical_style(digest: str) -> str | None:
    """The name (as Load Style lists it) of a style file whose tensors have this digest, if one exists.

    Only the headers are read: :func:`save_style` records the digest in the metadata.
    """
    from ..stylemamba.style_file import read_style_metadata

    for name in ch.list_files("stylemamba"):
        try:
            meta = read_style_metadata(ch.resolve("stylemamba", name))
        except Exception:  # a damaged or foreign file is not the same style
            continue
        if meta.get("tensor_sha256") == digest:
            return name
    return None


def style_file_missing(name: str, kind: str, how: str) -> bool | str:
    """True when ``name`` is a file Load Style / Load Universal Model lists, else what to do (shown by ComfyUI)."""
    if name in ch.list_files("stylemamba"):
        return True
    where = ", ".join(ch.folder_paths_for("stylemamba"))
    return (f"{kind} file '{name}' not found in {where}: {how}, or copy the .safetensors file there, then press R "
            "(refresh) and pick it")


def next_free_path(folders: list[Path], stem: str) -> Path:
    """``folders[0]/stem_00001.safetensors``, the first counter whose name no folder has: the others are those Load
    Style lists too (e.g. from extra_model_paths.yaml), and a new style must not hide one of the same name that
    saved workflows load (existing files are never overwritten either)."""
    counter = 1
    while any((f / f"{stem}_{counter:05d}.safetensors").exists() for f in folders):
        counter += 1
    return folders[0] / f"{stem}_{counter:05d}.safetensors"


NODES = [StyleMambaLoadTextModel, StyleMambaLoadPerceptual, StyleMambaLoadStyle, StyleMambaSaveStyle,
         StyleMambaLoadUniversalModel]
