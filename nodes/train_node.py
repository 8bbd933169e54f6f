"""The training node: fits a style (fusion module + decoder copy) to a prompt on content images."""
from __future__ import annotations

import logging
import time

import torch

from ..stylemamba.precision import PRECISIONS
from . import caches
from . import comfy_helpers as ch
from .common import (
    CATEGORY,
    CONDITIONING,
    OOM_NAMES,
    PERCEPTUAL,
    STYLE,
    TEXT_MODEL,
    PerceptualNets,
    image_to_comfy,
    image_to_library,
    without_inference_tensors,
)

log = logging.getLogger("stylemamba")

PRESETS = ("paper", "cpu")  # stylemamba.train.PRESETS
VGG_REDUCTIONS_SHOWN = ("relative", "mean", "sum")  # stylemamba.losses.VGG_REDUCTIONS, the default first
# preview images a training run shows on the node (and one at its last step): a preview every step cost the graphed
# H200 step 4 ms of its 59, every 5th step nothing (bench/results/steady_h200/callAR)
PREVIEWS_PER_RUN = 5
_devices_trained_on: set[str] = set()


def first_run_note(device: torch.device) -> str:
    """What the progress text adds for the first training on a GPU in this process, whose first step compiles our
    Triton kernels when the machine has not run them before: the node then shows no step for ~20 s (H200,
    bench/results/steady_h200/callAS: the first Train node 21.5 s on a new machine, 4.1 s in the next process)."""
    key = f"cuda:{device.index or 0}"  # an unindexed "cuda" counted as the first GPU
    if device.type != "cuda" or key in _devices_trained_on:
        return ""
    _devices_trained_on.add(key)
    return " (the first style in a process warms up; on a machine's first run it compiles GPU kernels: ~20 s)"


def _int(default, lo, hi, tip, step=1, **extra):
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip, **extra})


def _float(default, lo, hi, step, tip):
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})


class StyleMambaTrain:
    NODE_ID = "StyleMambaTrain"
    DISPLAY_NAME = "StyleMamba Train Style"
    REQUIRED_PACKAGES = ()
    DESCRIPTION = ("Trains a style from a text prompt on your content image(s) (StyleMamba, arXiv 2405.05027): the "
                   "VAE encoder is frozen, a Mamba style-fusion module and a copy of the VAE decoder are trained with "
                   "the directional, masked-directional, second-order and LPIPS losses (the VGG content loss is an "
                   "option). The defaults are the "
                   "paper's recipe (20 epochs, Adam 5e-4 halved at epoch 10, 512 px) with the changes measured in "
                   "docs/METHOD_CHOICES.md (patch weight 500, second-order push every epoch, output kept in "
                   "range, VGG content loss off). The cached VAE is never "
                   "modified. Cancel stops after the current step.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (STYLE, "IMAGE")
    RETURN_NAMES = ("style", "loss_curve")
    OUTPUT_TOOLTIPS = ("The trained style: connect it to Stylize and/or Save Style.",
                       "Every loss term per step on a log scale.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "A Stable Diffusion VAE (Load VAE, e.g. vae-ft-mse-840000-ema-pruned, or a "
                                           "checkpoint's VAE). Stylize must use the same VAE."}),
                "text_model": (TEXT_MODEL, {"tooltip": "The SigLIP/CLIP model that encoded the conditioning."}),
                "conditioning": (CONDITIONING, {"tooltip": "The style direction (Text Conditioning or Conditioning Mix)."}),
                "images": ("IMAGE", {"tooltip": "Content image(s) to train on (a batch trains on all of them). They "
                                                "are resized (short side) and centre-cropped to 'resolution'."}),
                "epochs": _int(20, 1, 10000, "Training epochs (paper: 20). One epoch = steps_per_epoch optimisation "
                                              "steps over the whole image batch with fresh random crops and masks."),
                "steps_per_epoch": _int(1, 1, 1000, "Optimisation steps per epoch (1 = the paper's timing, "
                                                     "~1 s per epoch on their GPU)."),
                "learning_rate": _float(5e-4, 1e-6, 1.0, 1e-5, "Adam learning rate (paper: 5e-4)."),
                "lr_decay_epoch": _int(10, 0, 10000, "From this epoch on the learning rate is halved (paper: 10)."),
                "resolution": _int(512, 64, 4096, "Training size in pixels (square, multiple of 8; paper: 512). Lower "
                                                  "it when the GPU runs out of memory; stylising works at any size.",
                                   step=8),
                "seed": _int(0, 0, 0xFFFFFFFF, "Random seed of the crops, masks and initial weights (same seed, same "
                                               "inputs: same style).", control_after_generate=False),
                "n_crops": _int(64, 1, 256, "Random crops per image for the patch directional loss (CLIPstyler: 64)."),
                "crop_fraction": _float(0.25, 0.05, 1.0, 0.01, "Crop side as a fraction of the image side "
                                                               "(0.25 = 128 px crops at 512 px)."),
                "mask_ratio": _float(0.5, 0.05, 0.95, 0.05, "Share of 16x16 patches masked for the masked "
                                                            "directional loss (paper: 50 %)."),
                "so_interval": _int(1, 1, 1000, "The second-order loss applies every this many epochs (paper: 5, "
                                                 "with its Eq. 4 form; 1 with the directional form measured in "
                                                 "docs/METHOD_CHOICES.md)."),
                "so_theta": _float(0.9, 0.0, 2.0, 0.01, "The second-order loss applies only while the directional "
                                                        "loss is below this threshold."),
                "dir_weight": _float(500.0, 0.0, 1e6, 1.0, "Weight of the global directional loss L_dir (Eq. 2)."),
                "patch_weight": _float(500.0, 0.0, 1e6, 1.0, "Weight of the patch directional loss over the "
                                                             "crops (0 turns it off; CLIPstyler: 9000, which took "
                                                             "most of the gradient: docs/METHOD_CHOICES.md)."),
                "md_weight": _float(500.0, 0.0, 1e6, 1.0, "Weight of the masked directional loss L_md (Eq. 3)."),
                "so_weight": _float(500.0, 0.0, 1e6, 1.0, "Weight of the second-order directional loss L_so "
                                                          "(Eq. 4-5; here the step from the previous epoch must "
                                                          "follow the prompt's direction)."),
                "vgg_weight_start": _float(0.0, 0.0, 1e6, 1.0, "VGG content loss weight for the first epochs; 0 "
                                                               "= off (the default: measured, the term cost effect "
                                                               "without keeping more content, docs/METHOD_CHOICES.md "
                                                               "item 5). In vgg_reduction units: 'relative' starts "
                                                               "to act at about 10000. Needs a VGG19 (Load "
                                                               "VGG/LPIPS)."),
                "vgg_weight_end": _float(0.0, 0.0, 1e6, 1.0, "VGG content loss weight after the switch epoch (the "
                                                             "paper's 9000 -> 150 was for the raw 'mean'/'sum' "
                                                             "MSE; relative: e.g. 10000 -> 200)."),
                "vgg_weight_switch_epoch": _int(5, 0, 10000, "Epoch at which the VGG weight drops from start to "
                                                             "end (paper: 5)."),
                "lpips_weight": _float(150.0, 0.0, 1e6, 1.0, "Weight of the LPIPS content loss. Needs an LPIPS "
                                                             "backbone (Load VGG/LPIPS)."),
                "precision": (list(PRECISIONS), {"default": "auto", "tooltip": "Mixed precision on the GPU: auto = "
                                                 "bf16 on CUDA, fp32 on the CPU."}),
            },
            "optional": {
                "perceptual": (PERCEPTUAL, {"tooltip": "VGG19 / LPIPS networks (Load VGG/LPIPS). Without them the "
                                                       "VGG and LPIPS content losses are skipped (said in the log)."}),
                "preset": (list(PRESETS), {
                    "default": "paper",
                    "tooltip": "paper = the widgets as set (defaults: the paper's recipe with the measured changes of "
                               "docs/METHOD_CHOICES.md). cpu = a recipe a CPU trains "
                               "in minutes: 256 px, 16 crops and a smaller fusion module (width 128, 2 blocks), "
                               "overriding resolution and n_crops."}),
                "vgg_reduction": (list(VGG_REDUCTIONS_SHOWN), {
                    "default": "relative",
                    "tooltip": "Units of the VGG weights. relative = each layer's feature error over the content's "
                               "own feature energy: a weight means the same with any VGG. mean = the raw MSE, the "
                               "only unit before this input existed: workflows saved before it trained with mean "
                               "(their VGG weights 9000 -> 150 now read as relative unless you choose mean). sum = "
                               "CLIPstyler's (2 x mean)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def train(self, vae, text_model, conditioning, images, epochs, steps_per_epoch, learning_rate, lr_decay_epoch,
              resolution, seed, n_crops, crop_fraction, mask_ratio, so_interval, so_theta, dir_weight,
              patch_weight, md_weight, so_weight, vgg_weight_start, vgg_weight_end, vgg_weight_switch_epoch,
              lpips_weight, precision, perceptual=None, preset=None, vgg_reduction=None, unique_id=None, prompt=None):
        from ..stylemamba.errors import memory_kind, training_out_of_memory
        from ..stylemamba.logs import said_already
        from ..stylemamba.losses import LossConfig
        from ..stylemamba.plots import loss_curve_image
        from ..stylemamba.train import (STYLE_LOSSES, TrainConfig, TrainingCancelled, apply_preset,
                                         memory_estimate, skipped_losses, train_style)

        conditioning.check_text_model(text_model)
        total = int(epochs) * int(steps_per_epoch)
        loss = LossConfig(dir=dir_weight, patch=patch_weight, md=md_weight, so=so_weight, lpips=lpips_weight,
                          vgg_weight_start=vgg_weight_start, vgg_weight_end=vgg_weight_end,
                          vgg_weight_switch_epoch=int(vgg_weight_switch_epoch), n_crops=int(n_crops),
                          crop_fraction=float(crop_fraction), mask_ratio=float(mask_ratio),
                          so_interval=int(so_interval), so_theta=float(so_theta),
                          **({"vgg_reduction": vgg_reduction} if vgg_reduction else {}))
        if not any(getattr(loss, k) > 0 for k in STYLE_LOSSES):  # TrainConfig's refusal, in the node's input names
            widgets = [f"{k}_weight" for k in STYLE_LOSSES]
            defaults = ", ".join(f"{w} {self.INPUT_TYPES()['required'][w][1]['default']:g}" for w in widgets)
            raise ValueError(f"{', '.join(widgets)} are all 0: nothing would pull the picture toward the prompt, and "
                             f"the style would ignore it; set at least one above 0 (the defaults are {defaults})")
        config = TrainConfig(epochs=int(epochs), steps_per_epoch=int(steps_per_epoch), lr=float(learning_rate),
                             lr_decay_epoch=int(lr_decay_epoch), resolution=int(resolution), seed=int(seed),
                             precision=precision, preview_every=max(1, total // PREVIEWS_PER_RUN), loss=loss)
        if preset and preset != "paper":
            config = apply_preset(config, preset)
        nets = perceptual if perceptual is not None else PerceptualNets()
        skipped = [SKIPPED[name] for name in skipped_losses(loss, nets.vgg, nets.lpips)]
        for message in skipped:
            log.warning("Train: %s", message)

        progress = ch.Progress(total, unique_id)
        content = image_to_library(images, copy=False)[:, :3]
        vae_name = ch.linked_file_name(prompt, unique_id, "vae")
        key = caches.training_key(ch.prepare_vae(vae, name=vae_name, load=False), conditioning, content, config,
                                  dict(nets.names), ch.torch_device().type)
        cached = caches.trained_styles.get(key)
        if cached is not None:  # ComfyUI only remembers the last prompt; this pack remembers the last few trainings
            message = (f"identical training already done in this session ({cached[0].metadata.get('steps')} steps): "
                       "reusing its style, not training again")
            log.info("Train: %s", message)
            progress.text(message)
            progress.update(total)
            return cached
        batch = int(content.shape[0])
        # the last style's trainer already holds part of it, counted by ComfyUI as used (reused, or released
        # before a new trainer is built)
        working_memory = max(0.0, memory_estimate(batch, config.resolution, config.loss.n_crops)
                             - caches.kept_training_bytes())
        sdvae = ch.prepare_vae(vae, memory_required=working_memory, name=vae_name)
        device = sdvae.device
        networks, patcher = caches.training_networks([text_model, nets.vgg, nets.lpips], device)
        progress.text(f"training {total} steps on {device}" + first_run_note(device)
                      + ("; " + "; ".join(skipped) if skipped else ""))

        def on_step(info):
            shown = ", ".join(f"{k} {v:.3g}" for k, v in info.losses.items())
            progress.text(f"step {info.step}/{info.total_steps} (epoch {info.epoch + 1}) {info.seconds:.0f} s\n{shown}")
            progress.update(info.step, info.preview)

        t0 = time.perf_counter()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                content = content.float().clone()
                # on the device, through ComfyUI's model management (a no-op when they are still there)
                ch.load_on_device([getattr(vae, "patcher", None), patcher], networks, device, working_memory)
                without_inference_tensors(networks)  # ComfyUI may have moved them inside inference mode
                moved_in = time.perf_counter() - t0
                with said_already("vgg loss skipped", "lpips loss skipped"):  # said above, naming the node's input
                    result = train_style(sdvae, text_model, content, conditioning, config, vgg=nets.vgg,
                                         lpips=nets.lpips, device=device, on_step=on_step, should_stop=ch.interrupted,
                                         free_memory=ch.free_memory_now(device),
                                         workspace=networks.workspace if device.type == "cuda" else None)
        except TrainingCancelled:
            log.info("Train: cancelled by the user")
            ch.raise_interrupted()  # ComfyUI's own interrupt: the UI shows "cancelled", not an error
        except Exception as exc:
            if ch.is_out_of_memory(exc):  # still torch's OOM type, so ComfyUI unloads its cached models
                raise training_out_of_memory(config.resolution, config.loss.n_crops, batch, OOM_NAMES,
                                             memory_kind(exc)) from exc
            raise
        finally:
            if patcher is None:  # without ComfyUI nobody else would move them off the GPU
                networks.to(ch.offload_device())
            ch.empty_cache()  # the training's working memory
        style = result.style
        style.metadata.update(perceptual=dict(nets.names), front_end="ComfyUI")
        log.info("Train: %d steps in %.1f s (networks to %s %.2f s, %s; %s)", result.steps,
                 time.perf_counter() - t0, device.type, moved_in, result.describe_time(), conditioning.describe())
        curve = loss_curve_image(result.history, title=f"StyleMamba: {', '.join(conditioning.prompts)}")
        output = (style, image_to_comfy(curve[None]))
        caches.trained_styles.put(key, output)
        return output


# How the node tells what the library skipped (the library decides: stylemamba.train.skipped_losses).
SKIPPED = {"vgg": "VGG content loss skipped: no VGG19 (connect Load VGG/LPIPS with a vgg19 file)",
           "lpips": "LPIPS loss skipped: no LPIPS backbone (connect Load VGG/LPIPS with an lpips_backbone file)"}


NODES = [StyleMambaTrain]
