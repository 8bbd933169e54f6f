"""Zero-shot styles: ONE fusion module and decoder trained over a prompt bank x an image set.

The fusion module is conditioned on the style embedding e_t through adaLN (paper Eq. 1), so trained
over many prompts it stylises with a prompt it never saw: encode the prompt, one forward pass (as
FastCLIPstyler and TxST do, with StyleMamba's architecture). Each step draws a batch of (image,
prompt) pairs that mixes prompts; row ``b`` is conditioned on its own e_t and judged against its
own direction ``e_t - e_src`` by the per-style losses (directional, patch, masked, second-order,
VGG / LPIPS content), which all take a per-row ``(B, D)`` direction.

Distributed on ``torch.distributed`` (DDP; see :mod:`stylemamba.distributed`): the GLOBAL batch of a
step is a function of (seed, step) only and rank r computes its slice, with the random crops and
masks of each row seeded by (seed, step, row). So 1 process and N processes with the same global
batch take the same steps (up to the order of floating-point sums), and a run resumed from a
checkpoint on any number of processes continues exactly where it stopped: the checkpoint needs no
sampler or RNG state, only the step. FSDP is not used: the trained parameters (a VAE decoder and the
fusion module: 49.5 M + 4.1 M at full size) and their Adam state fit any training GPU many times over; the memory
goes to activations, which sharding parameters would not reduce.

Schedule: ``epochs`` x ``steps_per_epoch`` steps; the per-style recipe's epoch numbers (content
weight switch at 5, lr halved at 10, second-order loss every ``so_interval``) keep their meaning in epochs. The
second-order loss compares the output with Y(i), the same batch through the weights at the start of
the previous epoch (a snapshot kept for that epoch; with one step per epoch this is exactly the
per-style trainer's rule).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L
from .checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, optimizer_from_tensors,
                         save_checkpoint, weights_from_tensors)
from .current_device import indexed, runs_on_device_of, same_device
from .direction import TextDirection
from .distributed import Dist, StopRequest, naming_a_stopped_rank
from .encoders import check_image_text_model, model_name, wordless_error
from .image_io import write_text_whole
from .options import from_options
from .photo_set import (paths_as_typed_fingerprint, photo_changes, photo_entries, photos_fingerprint, photos_record,
                        resized_photos)
from .precision import autocast, grad_scaler
from .prompt_bank import BankPrompt, PromptBank, PromptBankError
from .style_file import Style, UniversalModel, describe_vae
from .style_model import StyleModel
from .train import (TrainConfig, content_terms, enable_decoder_checkpointing, prepare_content, resize_for_tower,
                    seen_output, skipped_losses, step_views, warn_skipped_losses)
from .vae import fingerprints_match

log = logging.getLogger("stylemamba")


# The VGG content term of universal training: kept as it was (raw mean, 9000 -> 150). docs/METHOD_CHOICES.md item 5
# turned it off for per-style training, measured there; for the universal model it was not re-measured, and without
# it the universal proof's 'cool' kept SSIM 0.371 instead of 0.66 (random VGG19, tests/test_universal_proof.py).
UNIVERSAL_VGG_TERM = L.PAPER_VGG_TERM


def universal_loss(**options: Any) -> L.LossConfig:
    """The per-style LossConfig defaults with the universal VGG term (:data:`UNIVERSAL_VGG_TERM`), plus ``options``."""
    return L.LossConfig(**{**UNIVERSAL_VGG_TERM, **options})


@dataclass
class UniversalConfig(TrainConfig):
    """The per-style recipe (losses, fusion, lr schedule in epochs) plus what a long, shared run needs.

    Of the per-style options, ``memory_plan`` (micro-batches, view chunks) is not used here: the batch is the
    process's rows as they are; ``gradient_checkpointing`` is; ``compile`` must stay "off". The losses are the
    per-style defaults except the VGG term (:data:`UNIVERSAL_VGG_TERM`); a ``loss`` mapping gets its values for the
    VGG options it does not name.
    """

    loss: L.LossConfig = dataclasses.field(default_factory=universal_loss)

    steps_per_epoch: int = 50
    # 4x the per-style lr: on the known-meaning colour bank (6 hues, 240 steps of 6 pairs, small VAE, 64 px) the
    # directional loss ended at 0.19 with 2e-3 and 0.38 with 5e-4, where the model had learnt only one hue axis
    # (red <-> cyan) for all six prompts; a decoder at a quarter of it (decoder_lr_scale 0.25) ended at 0.32
    lr: float = 2e-3
    batch_size: int = 8  # GLOBAL (image, prompt) pairs per step, split evenly over the processes
    checkpoint_every: int = 200  # steps between checkpoints (0: only at the end and on Ctrl-C)
    keep_checkpoints: int = 2
    log_every: int = 10  # steps between loss lines on rank 0
    cache_images: int = 4096  # content latents / image embeddings kept per process (frozen, computed once)
    # the decoder's learning rate as a share of lr (0: the VAE's decoder stays as it is and only the fusion module,
    # the one part that sees the prompt, is trained)
    decoder_lr_scale: float = 1.0

    def __post_init__(self):
        if isinstance(self.loss, dict):  # a mapping (config file, recorded recipe): fill the VGG term it leaves out
            given = {L.OLD_NAMES.get(k, k) for k in self.loss}
            self.loss = {**{k: v for k, v in UNIVERSAL_VGG_TERM.items() if k not in given}, **self.loss}
        super().__post_init__()
        if self.compile != "off":
            raise ValueError(f"UniversalConfig.compile={self.compile!r}: torch.compile is not wired into universal "
                             "training yet; leave it 'off'")
        for name, ok, rule in (("batch_size", self.batch_size >= 1, ">= 1"),
                               ("checkpoint_every", self.checkpoint_every >= 0, ">= 0"),
                               ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
                               ("log_every", self.log_every >= 1, ">= 1"),
                               ("cache_images", self.cache_images >= 0, ">= 0"),
                               ("decoder_lr_scale", self.decoder_lr_scale >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"UniversalConfig.{name}={getattr(self, name)!r} is invalid: it must be {rule}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UniversalConfig:
        return from_options(cls, d, "universal training", renamed={"amp": "precision"})


# ------------------------------------------------------------------------------------------ data
def _seed(*parts: Any) -> int:
    """A 63-bit seed from any values: independent streams for (seed, what, step, row)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


class PairSampler:
    """The (image, prompt) pairs of each step: a function of (seed, step) only, the same for any world size.

    Images are drawn as consecutive slices of a fresh permutation per pass over the image set (every
    image equally often, like ``DistributedSampler``); prompts in proportion to the bank's weights,
    stratified within each batch (see :meth:`global_batch`). Rank r of W takes rows ``[r*B/W, (r+1)*B/W)`` of the global batch B.
    """

    def __init__(self, n_images: int, prompt_weights: Sequence[float], batch_size: int, seed: int):
        if n_images < 1:
            raise ValueError("no content images: give at least one image to train on")
        self.n_images, self.batch_size, self.seed = int(n_images), int(batch_size), int(seed)
        self.weights = torch.tensor([float(w) for w in prompt_weights], dtype=torch.float64)
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, cycle: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != cycle:
            g = torch.Generator().manual_seed(_seed(self.seed, "images", cycle))
            self._perm = (cycle, torch.randperm(self.n_images, generator=g))
        return self._perm[1]

    def global_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image indices, prompt indices), each (B,) long, of ``step``.

        Prompts are drawn by systematic sampling over the weights (in a random order of the prompts): each prompt
        appears floor or ceil of B x its share in every batch, so a batch of B >= P equal-weight prompts holds all
        of them; no prompt dominates a step by chance, which would pull the shared weights towards it.
        """
        pos = step * self.batch_size + torch.arange(self.batch_size)
        images = torch.stack([self._permutation(int(p) // self.n_images)[int(p) % self.n_images] for p in pos])
        g = torch.Generator().manual_seed(_seed(self.seed, "prompts", step))
        order = torch.randperm(self.weights.numel(), generator=g)
        cdf = torch.cumsum(self.weights[order], 0)
        cdf = cdf / cdf[-1]
        u = (torch.rand((), generator=g, dtype=torch.float64) + torch.arange(self.batch_size)) / self.batch_size
        picked = order[torch.searchsorted(cdf, u).clamp_max(order.numel() - 1)]
        prompts = picked[torch.randperm(self.batch_size, generator=g)]
        return images, prompts

    def rows(self, rank: int, world_size: int) -> range:
        check_batch_split(self.batch_size, world_size)
        per = self.batch_size // world_size
        return range(rank * per, (rank + 1) * per)


def check_batch_split(batch_size: int, world_size: int) -> None:
    """Each process takes the same number of pairs; the CLI asks before the models load (after, on every GPU)."""
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split evenly over {world_size} processes: use a "
                         f"multiple of {world_size} (each process takes the same number of pairs)")


class ImageSet:
    """Content images (tensors, files, or a folder), each resized and centre-cropped to the training resolution on
    access."""

    def __init__(self, images: Sequence[torch.Tensor | str | Path] | torch.Tensor | str | Path, resolution: int):
        if isinstance(images, (str, Path)):  # a folder or one file, as --images reads it (not the name's letters)
            from .image_io import list_images

            images = list_images(images)
        self.items = list(images.unbind(0)) if torch.is_tensor(images) and images.dim() == 4 else list(images)
        if not self.items:
            raise ValueError("no content images: give at least one image (file, folder or tensor) to train on")
        self.resolution = int(resolution)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        if torch.is_tensor(item):
            return prepare_content(item, self.resolution, first=i)[0]  # named by its place in the set, not 0
        return prepare_content(read_photo(item), self.resolution, names=[Path(item).name])[0]

    @functools.cached_property
    def entries(self) -> list[list[Any]]:
        """[name, size] of each photo (:func:`~stylemamba.photo_set.photo_entries`), read once: a checkpoint records
        them, and a large set's files are not stat'ed again at every checkpoint."""
        return photo_entries(self.items)

    def fingerprint(self) -> str:
        """Identifies the set for resuming: the files' names relative to their folder (however it was typed), or
        the tensors' shapes and sums."""
        return photos_fingerprint(self.entries)


def read_photo(path: str | Path) -> torch.Tensor:
    """A training photo's pixels. Read when drawn, so a file whose header was fine but whose data is cut short (a
    download stopped, a disk error) fails here: named with its path and the fix, not as a format to change."""
    from .image_io import load_image

    try:
        return load_image(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"training photo {path} is gone (moved or deleted since the run started): put it "
                                "back") from None
    except ValueError as exc:
        if not isinstance(exc.__cause__, OSError):  # too large to open: its own message names the file and the fix
            raise
        cause = " ".join(str(exc.__cause__).split())
        raise ValueError(f"training photo {path} cannot be read ({cause}): the file is damaged or truncated; re-save "
                         "it under the same name, or put a good copy in its place") from exc


class PhotoUnreadable(ValueError):
    """A training photo that could not be used when its turn came. Raised by the run after it stopped as a Ctrl-C
    stops it (a checkpoint written): ``partial`` is the run so far, for the caller to keep."""

    def __init__(self, message: str, partial: UniversalResult | None = None):
        super().__init__(message)
        self.partial = partial


# the per-style trainer's speed options that universal training does not apply (its steps run eagerly, in the
# decoder's own GroupNorm and attention), with what it does instead
UNUSED_SPEED_OPTIONS = {"cuda_graphs": "its steps run eagerly",
                        "matmul_attention": "the decoder keeps its own attention",
                        "autocast_groupnorm": "the decoder's GroupNorms run as autocast runs them"}


def warn_unused_speed_options(cfg: UniversalConfig) -> None:
    """A recipe that sets a per-style speed option universal training does not apply is told so (it was followed by
    nothing, without a word); left at its default, nothing is said."""
    for name, instead in UNUSED_SPEED_OPTIONS.items():
        value = getattr(cfg, name)
        if value != getattr(UniversalConfig, name):
            log.warning("UniversalConfig.%s %s is not used: %s in universal training (the option is the per-style "
                        "trainer's)", name, json.dumps(value), instead)


def refuse_wordless_prompts(text, bank: PromptBank) -> None:
    """A bank prompt the text model reads as no words (emoji, punctuation), named by its line: encode_text names
    only the prompt, and a bank may hold thousands."""
    wordless = set(text.wordless(bank.texts)) if hasattr(text, "wordless") else set()
    for p in bank.prompts:
        if p.text in wordless:
            raise PromptBankError(f"{bank.source}: line {p.line}: {wordless_error(p.text, model_name(text))}")


def encode_bank(text, prompts: Sequence[str], chunk: int = 64) -> torch.Tensor:
    """(P, D) L2-normalised text embeddings of the prompts, encoded in chunks (banks can be large)."""
    with torch.no_grad():
        return torch.cat([text.encode_text(list(prompts[i:i + chunk])).float() for i in range(0, len(prompts), chunk)])


# ------------------------------------------------------------------------------------------ model
class UniversalNet(nn.Module):
    """The trained part: a :class:`StyleModel` (fusion + decoder) conditioned PER ROW (each image its own prompt).

    A module with a ``forward`` so DistributedDataParallel can wrap it; the forward pass itself is the
    StyleModel's, the one Stylize runs.
    """

    def __init__(self, model: StyleModel):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B,C,h,w) and embeddings (B,D) -> raw (unclamped) images."""
        return self.model.raw_output(z, cond)


def step_views_per_row(y: torch.Tensor, lc: L.LossConfig, size: int, generators: Sequence[torch.Generator],
                       content: torch.Tensor | None = None):
    """The trainer's :func:`~stylemamba.train.step_views` for each row with ITS generator (world-size free).

    Returns (images for ONE tower call, split: embeddings -> (whole, crops or None, masked or None), the
    content images' reference views or None, split_references: their embeddings -> (same crops of X or None,
    same-masked X or None)) in the layout ``losses.style_loss`` expects (crops image-major). ``content``: the
    rows' content images, needed for the same-crop / same-mask references.
    """
    per_row = [step_views(y[i:i + 1], lc, size, g, content=None if content is None else content[i:i + 1])
               for i, g in enumerate(generators)]
    sizes = [v.images.shape[0] for v in per_row]

    def split(emb: torch.Tensor):
        parts = [v.split(e) for v, e in zip(per_row, emb.split(sizes))]
        whole = torch.cat([p[0] for p in parts])
        crops = torch.cat([p[1] for p in parts]) if per_row[0].n_crops else None
        masked = torch.cat([p[2] for p in parts]) if per_row[0].masked else None
        return whole, crops, masked

    if per_row[0].references is None:
        return torch.cat([v.images for v in per_row]), split, None, lambda emb: (None, None)
    ref_sizes = [v.references.shape[0] for v in per_row]

    def split_references(emb: torch.Tensor):
        parts = [v.split_references(e) for v, e in zip(per_row, emb.split(ref_sizes))]
        crops = torch.cat([p[0] for p in parts]) if per_row[0].ref_crops else None
        masked = torch.cat([p[1] for p in parts]) if per_row[0].ref_masked else None
        return crops, masked

    return (torch.cat([v.images for v in per_row]), split, torch.cat([v.references for v in per_row]),
            split_references)


SOURCE_PHOTOS = 256  # training photos whose mean image embedding is stored (read before the first step)
_SNAPSHOTS = {"so_snapshot.": "snapshot", "so_next_snapshot.": "next_snapshot"}  # checkpoint key prefixes
LOG_FILE = "log.jsonl"  # rank 0's log lines, in the checkpoint directory


@dataclass
class LogLine:
    """What rank 0 reports every ``log_every`` steps: the global mean of each loss term over those steps."""

    step: int
    total_steps: int
    epoch: int
    losses: dict[str, float]
    seconds: float
    pairs_per_second: float


@dataclass
class UniversalResult:
    model: UniversalModel
    history: list[dict[str, float]]  # one LogLine's losses per log interval (global means)
    steps: int
    seconds: float
    cancelled: bool = False
    checkpoint: Path | None = None
    signum: int | None = None  # the signal that stopped it (run_until_ctrl_c); a command exits 128 + it


class UniversalTrainer:
    """Everything a universal training run needs on one process; ``run()`` executes it (usable once)."""

    @runs_on_device_of("vae")
    def __init__(self, vae, text, images: ImageSet | Sequence | torch.Tensor, bank: PromptBank | Sequence[str],
                 config: UniversalConfig | None = None, vgg: nn.Module | None = None, lpips: nn.Module | None = None,
                 dist: Dist | None = None, checkpoint_dir: str | Path | None = None, resume: bool = False):
        check_image_text_model(text)
        if config is not None and not isinstance(config, UniversalConfig):  # it lacks batch_size, checkpoint_every...
            raise TypeError(f"config: give a UniversalConfig (the train recipe plus batch_size, checkpoints ...), not "
                            f"a {type(config).__name__}; UniversalConfig.from_dict(config.to_dict()) keeps its fields "
                            "(its lr and VGG term then too, not the universal defaults)")
        self.cfg = config or UniversalConfig()
        self.dist = dist or Dist(device=vae.device)
        self.device = indexed(self.dist.device)
        for what, dev in (("VAE", vae.device), ("text model", text.device)):
            if not same_device(dev, self.device):
                raise ValueError(f"the {what} is on {dev} but this process trains on {self.device}: move it first")
        self.vae, self.text, self.vgg, self.lpips = vae, text, vgg, lpips
        self.images = images if isinstance(images, ImageSet) else ImageSet(images, self.cfg.resolution)
        if self.images.resolution != self.cfg.resolution:
            raise ValueError(f"the image set is prepared at {self.images.resolution} px but the recipe trains at "
                             f"{self.cfg.resolution} px")
        if isinstance(bank, (str, Path)):  # a string is a sequence of its letters: each would become a prompt
            raise TypeError(f"bank: give a list of prompts or a PromptBank, not the string '{bank}' (a bank file: "
                            f"load_prompt_bank('{bank}'); one prompt: ['{bank}'])")
        self.bank = bank if isinstance(bank, PromptBank) else PromptBank(
            tuple(BankPrompt(" ".join(str(p).split()), line=i + 1) for i, p in enumerate(bank)), "<prompts>")
        lc = self.cfg.loss
        self.skipped_losses = skipped_losses(lc, vgg, lpips)
        warn_skipped_losses(self.skipped_losses)
        if self.cfg.memory_plan != "auto":  # an override followed by nothing, and no log line said so
            log.warning("UniversalConfig.memory_plan %s is not used: universal training runs each process's rows "
                        "at once (gradient_checkpointing saves the decoder's memory; more processes, each its "
                        "share of the batch)", json.dumps(self.cfg.memory_plan))
        warn_unused_speed_options(self.cfg)
        self.sampler = PairSampler(len(self.images), self.bank.weights, self.cfg.batch_size, self.cfg.seed)
        self.rows = self.sampler.rows(self.dist.rank, self.dist.world_size)

        torch.manual_seed(self.cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        refuse_wordless_prompts(text, self.bank)
        self.prompt_emb = encode_bank(text, self.bank.texts).to(self.device)
        self.e_src = text.encode_text([lc.source_prompt])[0].float().to(self.device)
        self.net = UniversalNet(StyleModel.for_training(vae, self.cfg.fusion, self.e_src))
        if self.cfg.channels_last and self.device.type == "cuda":
            self.net.model.decoder.to(memory_format=torch.channels_last)
        if self.cfg.gradient_checkpointing:  # no automatic memory plan here: a flag of the recipe
            enable_decoder_checkpointing(self.net.model.decoder)
        if self.cfg.decoder_lr_scale == 0:
            self.net.model.decoder.requires_grad_(False)
        groups = [{"params": [p for p in self.net.model.fusions.parameters()], "lr_scale": 1.0}]
        if self.cfg.decoder_lr_scale > 0:
            groups.append({"params": list(self.net.model.decoder.parameters()), "lr_scale": self.cfg.decoder_lr_scale})
        self.names = [n for prefix, mod in (("model.fusions", self.net.model.fusions), ("model.decoder", self.net.model.decoder))
                      for n, p in mod.named_parameters(prefix=prefix) if p.requires_grad]  # in the optimizer's order
        self.opt = torch.optim.Adam(groups, lr=self.cfg.lr, fused=True if self.device.type == "cuda" else None)
        self.scaler = grad_scaler(self.device, self.cfg.precision)
        self.ddp = self.net
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.net, device_ids=[self.device.index] if self.device.type == "cuda"
                                               else None)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.e_src_image = self._source_image_embedding()
        # second-order loss: the weights at the start of the previous epoch (used in this epoch), and those at
        # the start of this epoch (used in the next one); kept only around epochs where the loss applies
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.next_snapshot: dict[str, torch.Tensor] | None = None
        self.step_index = 0
        self.history: list[dict[str, float]] = []
        self._window: tuple[dict[str, torch.Tensor], int] = ({}, 0)  # (loss sums, steps) of the open log interval
        # called with a phase name as each part of a step ends (inputs, forward, views+tower, losses, backward,
        # optimizer): the benchmark's timer (bench-universal); None in training
        self.on_phase: Callable[[str], None] | None = None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._prepare_checkpoints(resume)

    # ------------------------------------------------------------------ frozen inputs
    def _frozen(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image i: pixels, its latent z and its image embedding F_I(X) (the last two cached)."""
        try:
            x = self.images[i].to(self.device)[None]
        except (ValueError, TypeError, OSError) as exc:
            raise PhotoUnreadable(" ".join(str(exc).split())) from exc
        if i not in self._cache:
            with torch.no_grad(), autocast(self.device, self.cfg.precision):
                z, emb = self.vae.encode(x), self.text.encode_image(x).float()
            if len(self._cache) < self.cfg.cache_images:
                self._cache[i] = (z, emb)
            return x, z, emb
        return (x, *self._cache[i])

    def _source_image_embedding(self) -> torch.Tensor:
        """Mean image embedding of the first :data:`SOURCE_PHOTOS` training photos: where reference-image directions
        start."""
        embs = [self._frozen(i)[2] for i in range(min(SOURCE_PHOTOS, len(self.images)))]
        return F.normalize(torch.cat(embs).mean(0), dim=-1)

    # ------------------------------------------------------------------ schedule
    def epoch_of(self, step: int) -> int:
        return step // self.cfg.steps_per_epoch

    def lr_at(self, epoch: int) -> float:
        return self.cfg.lr * (self.cfg.lr_decay if epoch >= self.cfg.lr_decay_epoch else 1.0)

    def so_epoch(self, epoch: int) -> bool:
        lc = self.cfg.loss
        return lc.so > 0 and epoch >= lc.so_interval and epoch % lc.so_interval == 0

    # ------------------------------------------------------------------ one step
    @runs_on_device_of("self")
    def step(self) -> dict[str, torch.Tensor]:
        """One optimisation step on this rank's rows of the global batch; returns detached local loss terms."""
        cfg, lc, s = self.cfg, self.cfg.loss, self.step_index
        epoch = self.epoch_of(s)
        if s % cfg.steps_per_epoch == 0:
            self.snapshot = self.next_snapshot if self.so_epoch(epoch) else None
            self.next_snapshot = ({n: p.detach().clone() for n, p in self.net.named_parameters()}
                                  if self.so_epoch(epoch + 1) else None)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(epoch) * group["lr_scale"]
        img_idx, prompt_idx = self.sampler.global_batch(s)
        rows = list(self.rows)
        try:
            frozen, unreadable = [self._frozen(int(img_idx[r])) for r in rows], None
        except PhotoUnreadable as exc:
            frozen, unreadable = [], str(exc)
        # every rank stops before this step when one cannot read its photos (DDP would wait for it); one small
        # collective, where the GPU is idle already (the previous step ended with one)
        if self.dist.any(unreadable is not None):
            raise PhotoUnreadable(self.dist.first_message(unreadable))
        x = torch.cat([f[0] for f in frozen])
        z = torch.cat([f[1] for f in frozen])
        emb_x = torch.cat([f[2] for f in frozen])
        e_t = self.prompt_emb[prompt_idx[rows]]
        text_dir = e_t - self.e_src  # per row: each image is pushed along its own prompt's direction
        gens = [torch.Generator(device=self.device).manual_seed(_seed(cfg.seed, "views", s, r)) for r in rows]
        mark = self.on_phase or (lambda name: None)
        mark("inputs")
        with autocast(self.device, cfg.precision):
            y_raw = self.ddp(z, e_t)
            y = seen_output(y_raw, lc)
            mark("forward")
            views, split, references, split_references = step_views_per_row(y, lc, self.text.image_size, gens, x)
            emb_y, crop_embs, masked_emb = split(self.text.encode_image(views))  # one batched tower call
            ref_crops = ref_masked = None
            if references is not None:  # the same crops / mask of X: references, no gradient
                with torch.no_grad():
                    ref_crops, ref_masked = split_references(self.text.encode_image(references).float())
            mark("views+tower")
            prev = self._previous_embedding(z, e_t) if self.so_epoch(epoch) and self.snapshot is not None else None
            terms = L.style_loss(emb_y, emb_x, text_dir, lc, epoch, crop_embs=crop_embs, masked_emb=masked_emb,
                                 prev_img_emb=prev, src_crop_embs=ref_crops, src_masked_emb=ref_masked)
            if "so_gate" in terms:  # gate on the GLOBAL batch's directional loss, so every rank agrees
                gate = L.second_order_gate(self.dist.mean(terms["dir"].detach()), epoch, lc.so_theta, lc.so_interval)
                terms.pop("so_gate")
                terms["so"] = gate * terms["so"]
            feats_x = None
            if self.vgg is not None and lc.uses_vgg:
                with torch.no_grad():
                    feats_x = [f.detach() for f in self.vgg(x)]
            terms.update(content_terms(y, y_raw, x, feats_x, lc, self.vgg, self.lpips))
            total = L.total_loss(terms, lc.weights(epoch))
        mark("losses")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()  # DDP averages the gradients over the ranks here
        mark("backward")
        self.scaler.step(self.opt)
        self.scaler.update()
        mark("optimizer")
        self.step_index += 1
        out = {k: v.detach().float() for k, v in terms.items()}
        out["total"] = total.detach().float()
        return out

    def _previous_embedding(self, z: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """F_I(Y(i)): this batch through the snapshot weights (the previous epoch's model), no gradient."""
        with torch.no_grad():
            y = seen_output(torch.func.functional_call(self.net, self.snapshot, (z, e_t)), self.cfg.loss)
            return self.text.encode_image(resize_for_tower(y, self.text.image_size)).float()

    # ------------------------------------------------------------------ the loop
    @runs_on_device_of("self")
    def run(self, on_log: Callable[[LogLine], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> UniversalResult:
        """Train to ``epochs * steps_per_epoch`` steps (from the resumed step), logging and checkpointing on rank 0.

        ``should_stop`` is asked after every step on every rank; if it is true on ANY rank, all ranks stop
        after that step, a checkpoint is written and the result says ``cancelled``.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        first = self.step_index
        acc, n_acc = self._window  # the loss sums of a log interval begun before the checkpoint resumed from
        timed, t_log = 0, time.perf_counter()
        cancelled, unreadable = False, None
        while self.step_index < cfg.total_steps:
            try:
                terms = self.step()
            except PhotoUnreadable as exc:  # stopped as a Ctrl-C stops it: the steps since the last checkpoint kept
                cancelled, unreadable = True, exc
                break
            acc = {**acc, **{k: acc.get(k, torch.zeros((), device=v.device)) + v for k, v in terms.items()}}
            n_acc, timed = n_acc + 1, timed + 1
            s = self.step_index
            if s % cfg.log_every == 0 or s == cfg.total_steps:
                self._log(acc, n_acc, time.perf_counter() - t_log, on_log, time.perf_counter() - t0, timed)
                acc, n_acc, timed, t_log = {}, 0, 0, time.perf_counter()
            self._window = (acc, n_acc)
            stop = self.dist.any(bool(should_stop and should_stop()))
            if stop and s < cfg.total_steps:
                cancelled = True
                break
            if cfg.checkpoint_every and s % cfg.checkpoint_every == 0 and s < cfg.total_steps:
                self.save_checkpoint()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        # keep_going: a checkpoint that cannot be written (a full disk) must not take the trained model with it
        path = self.save_checkpoint(keep_going=True) if self.checkpoint_dir is not None and self.step_index > first \
            else None
        if n_acc:  # stopped in mid-interval: said now, after the checkpoint (it keeps the interval's sums instead, so
            # a resumed run logs the lines of an uninterrupted one)
            self._log(acc, n_acc, time.perf_counter() - t_log, on_log, time.perf_counter() - t0, timed)
        result = UniversalResult(self.result(seconds, cancelled), list(self.history), self.step_index, seconds,
                                 cancelled, path)
        if unreadable is not None:
            raise PhotoUnreadable(f"{unreadable}. Training stopped before step {self.step_index + 1} of "
                                  f"{cfg.total_steps}: {self._kept(path, first)}", result) from unreadable
        return result

    def _kept(self, path: Path | None, first: int) -> str:
        """Where a run stopped by a photo is kept, and how it goes on."""
        if self.checkpoint_dir is None:
            return "the error's partial result holds the model trained so far"
        if path is not None:
            return f"checkpoint {path} keeps the run; continue it with the same command and --resume"
        if self.step_index == first:
            return ("nothing was trained since the checkpoint it resumed from; continue with the same command and "
                    "--resume" if first else "nothing was trained yet; start it again")
        return "its checkpoint could not be written (see above); the error's partial result holds the model"

    def _log(self, acc, n, seconds, on_log, elapsed, timed) -> None:
        keys = sorted(acc)
        mean = self.dist.mean(torch.stack([acc[k] for k in keys]) / n)  # global means (one all-reduce)
        losses = {k: float(v) for k, v in zip(keys, mean.tolist())}
        self.history.append({"step": self.step_index, **losses})
        if not self.dist.is_main:
            return
        line = LogLine(self.step_index, self.cfg.total_steps, self.epoch_of(self.step_index - 1), losses, elapsed,
                       timed * self.cfg.batch_size / max(seconds, 1e-9))
        if self.checkpoint_dir is not None:
            try:
                with open(self.checkpoint_dir / LOG_FILE, "a") as f:
                    f.write(json.dumps(dataclasses.asdict(line)) + "\n")
            except OSError as exc:  # a full disk: the loss curve loses a line, the run goes on
                log.warning("%s not written (%s): the run goes on", LOG_FILE, exc.strerror or exc)
        if on_log is not None:
            on_log(line)

    # ------------------------------------------------------------------ checkpoints
    def _identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (anything else would train a different model)."""
        recipe = self.cfg.to_dict()
        for free in ("epochs", "checkpoint_every", "keep_checkpoints", "log_every", "cache_images", "compile",
                     "preview_every", "gradient_checkpointing", "memory_plan", *UNUSED_SPEED_OPTIONS):
            recipe.pop(free)  # extending a run, its bookkeeping, or recomputing activations (same steps) is fine;
            # memory_plan and the unused speed options are not used by universal training (it says so)
        bank = hashlib.sha256(json.dumps([self.bank.texts, self.bank.weights]).encode()).hexdigest()[:16]
        return {"recipe": recipe, "bank": bank, "images": self.images.fingerprint(),
                "text_model": model_name(self.text), "base_vae": self.vae.identity.get("arch"),
                # the models' weights, not only their layout and folder name (compared by _model_differences)
                "base_vae_weights": self.vae.identity, "base_vae_name": self.vae.name,
                "source_embedding": [float(f"{x:.6g}") for x in self.e_src.tolist()]}

    def _resume_differences(self, ck) -> list[str]:
        """What differs between this run and checkpoint ``ck``'s, in words (empty: it can be resumed)."""
        mine, theirs = dict(self._identity()), dict(ck.state.get("identity") or {})
        photos = self._photo_difference(mine.pop("images"), theirs.pop("images", None), ck.state.get("photos"))
        models = self._model_differences(mine, theirs)
        return _differences(mine, theirs) + ([photos] if photos else []) + models

    def _photo_difference(self, mine: str, theirs: str | None, record: dict[str, Any] | None) -> str | None:
        """The photos' difference in words, or None. A checkpoint without a record of its photos (an older
        version's) identified them by their paths as typed: those paths still resume."""
        if theirs is None or theirs == mine or (record is None and
                                                theirs == paths_as_typed_fingerprint(self.images.items)):
            resized = resized_photos(record or {}, self.images.entries) if theirs == mine else []
            if resized and self.dist.is_main:
                log.warning("%d photo(s) changed size since the checkpoint (%s): the run goes on with them as they are "
                            "now", len(resized), ", ".join(resized[:3]) + (" ..." if len(resized) > 3 else ""))
            return None
        if record is None:
            return ("images: the checkpoint, written by an older version, identifies its photos by their paths as "
                    "typed, and these are typed otherwise: give --images exactly as when the run started (the same "
                    "relative or absolute path)")
        return f"images: {photo_changes(record, self.images.entries)}"

    def _model_differences(self, mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
        """The VAE and the text model, compared by their weights where the checkpoint records them (an older one
        holds the VAE's layout and the text model's folder name only). Their fields are taken out of both."""
        for key in ("base_vae", "base_vae_weights", "base_vae_name", "text_model", "source_embedding"):
            mine.pop(key)
        vae_then, arch_then = theirs.pop("base_vae_weights", None), theirs.pop("base_vae", None)
        vae_name_then = theirs.pop("base_vae_name", None)
        out = []
        if (not fingerprints_match(vae_then, self.vae.identity) if isinstance(vae_then, dict)
                else arch_then is not None and arch_then != self.vae.identity.get("arch")):
            then = (describe_vae(vae_name_then, vae_then) if isinstance(vae_then, dict)
                    else f"of another layout ({arch_then})")
            out.append(f"the VAE: trained on the VAE {then}, but the VAE given now (--vae) is "
                       f"{describe_vae(self.vae.name, self.vae.identity)}")
        text_then, emb_then = theirs.pop("text_model", None), theirs.pop("source_embedding", None)
        text_now = model_name(self.text)
        prompt_then = ((theirs.get("recipe") or {}).get("loss") or {}).get("source_prompt")
        if isinstance(emb_then, list) and prompt_then == self.cfg.loss.source_prompt:  # (another prompt: told apart)
            # the same weights encode the source prompt the same way, whatever the name
            same = encodes_alike(emb_then, self.e_src)
        else:
            same = text_then is None or text_then == text_now
        if not same:
            other = (f"'{text_now}', of the same name but other weights (it encodes the source prompt "
                     f"'{self.cfg.loss.source_prompt}' otherwise)" if text_then == text_now else f"'{text_now}'")
            out.append(f"the text model: trained with '{text_then}', but the text model given now (--text-model) is "
                       f"{other}")
        return out

    def _prepare_checkpoints(self, resume: bool) -> None:
        if self.checkpoint_dir is None:
            if resume:
                raise ValueError("resume asked for but no checkpoint directory given")
            return
        check_checkpoint_dir(self.checkpoint_dir)
        latest = latest_checkpoint(self.checkpoint_dir)
        if self.dist.active:  # a rank that saw another checkpoint would train other steps with weights of its own
            mine = latest.name if latest is not None else None
            main = self.dist.broadcast_object(mine)
            if self.dist.any(main != mine):
                raise CheckpointError(f"the processes of this job do not see the same checkpoints in "
                                      f"{self.checkpoint_dir} (rank 0: {main or 'none'}, rank {self.dist.rank}: "
                                      f"{mine or 'none'}): on several nodes, give a folder on storage they share")
        if latest is None:
            if resume:
                log.warning("no checkpoint in %s yet: starting from step 0", self.checkpoint_dir)
        elif not resume:
            raise FileExistsError(f"{self.checkpoint_dir} already holds a run (checkpoint {latest.name}): pass --resume "
                                  "to continue it, or choose an empty checkpoint directory")
        else:
            self.load_checkpoint(latest)
        if self.dist.is_main:
            self._restart_log()

    def _restart_log(self) -> None:
        """Keep the lines of log.jsonl that the checkpoint's history holds: a run killed after its last checkpoint
        had logged steps that the resumed run takes again (twice in the loss curve), a stopped one the interval it
        stopped in (logged whole when resumed). Written now, a folder that takes no file is named before the first
        step, not at the first log line."""
        path = self.checkpoint_dir / LOG_FILE
        logged = {h.get("step") for h in self.history}
        kept = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                if json.loads(line)["step"] in logged:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):  # a line half-written when the run was killed
                pass
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            write_text_whole(path, "".join(kept))
        except OSError as exc:
            raise ValueError(f"checkpoint directory {self.checkpoint_dir} cannot be written ({exc.strerror or exc}): "
                             "choose a folder you can write to") from None

    def save_checkpoint(self, keep_going: bool = False) -> Path | None:
        """Rank 0 writes the checkpoint of the current step; every rank waits for it. Returns its path on rank 0.

        ``keep_going``: a write that fails is logged and None returned instead of raising (the run's last checkpoint:
        the trained model is still returned and can be saved elsewhere).
        """
        path = None
        sums, steps = self._window
        keys = sorted(sums)  # the same on every rank (the ranks take the same steps): a collective all of them call
        means = self.dist.mean(torch.stack([sums[k] for k in keys])).tolist() if keys else []
        if self.dist.is_main and self.checkpoint_dir is not None:
            tensors = dict(self.net.state_dict())
            for prefix, snap in _SNAPSHOTS.items():
                tensors.update({prefix + k: v for k, v in (getattr(self, snap) or {}).items()})
            state = {"identity": self._identity(), "photos": photos_record(self.images.entries),
                     "history": self.history,
                     "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                     "world_size": self.dist.world_size, "config": self.cfg.to_dict(),
                     "log_window": {"steps": steps, "sums": dict(zip(keys, means))}}
            try:
                path = save_checkpoint(self.checkpoint_dir, self.step_index, tensors, self.opt, self.names, state,
                                       keep=self.cfg.keep_checkpoints)
                log.info("checkpoint: %s", path)
            except CheckpointError as exc:
                if not keep_going:
                    raise
                log.error("%s", exc)
        self.dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        ck = load_checkpoint(path)
        diff = self._resume_differences(ck)
        if diff:
            raise CheckpointError(f"checkpoint {ck.path} belongs to another run: {'; '.join(diff)}. Resume with the "
                                  "same prompt bank, images, models and recipe (only the number of epochs may grow), "
                                  "or start a new run without --resume, in an empty checkpoint directory")
        if ck.step > self.cfg.total_steps:  # its model would be written as this shorter recipe's, trained longer
            need = -(-ck.step // self.cfg.steps_per_epoch)
            raise CheckpointError(f"checkpoint {ck.path} is at step {ck.step}, past this recipe's "
                                  f"{self.cfg.total_steps} steps ({self.cfg.epochs} epochs): resume with at least "
                                  f"{need} epochs (--epochs {need}), or start in an empty checkpoint directory")
        weights = {k: v for k, v in ck.tensors.items() if not k.startswith(tuple(_SNAPSHOTS))}
        weights_from_tensors(self.net, weights, ck.path)
        for prefix, snap in _SNAPSHOTS.items():
            found = {k[len(prefix):]: v.to(self.device) for k, v in ck.tensors.items() if k.startswith(prefix)}
            setattr(self, snap, found or None)
        optimizer_from_tensors(self.opt, self.names, ck.optimizer_tensors, ck.optimizer_meta)
        if ck.state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ck.state["scaler"])
        self.step_index = ck.step
        self.history = list(ck.state.get("history", []))
        window = ck.state.get("log_window") or {}
        self._window = ({k: torch.tensor(float(v), device=self.device) for k, v in window.get("sums", {}).items()},
                        int(window.get("steps", 0)))
        log.info("resumed from %s (step %d of %d)", ck.path, ck.step, self.cfg.total_steps)

    # ------------------------------------------------------------------ the artefact
    def result(self, seconds: float, cancelled: bool = False) -> UniversalModel:
        meta = {"kind": "universal", "text_model": model_name(self.text),
                "text_model_kind": getattr(self.text, "kind", ""), "source_prompt": self.cfg.loss.source_prompt,
                "bank_size": len(self.bank), "bank_prompts": self.bank.texts, "bank_source": self.bank.source,
                "content_images": len(self.images), "recipe": self.cfg.to_dict(), "steps": self.step_index,
                "train_seconds": round(seconds, 3), "cancelled": cancelled, "world_size": self.dist.world_size,
                "losses_skipped": self.skipped_losses, "final_losses": self.history[-1] if self.history else {}}
        style = self.net.model.to_style(meta)  # fusion weights and decoder delta, as a style stores them
        return UniversalModel(style.fusion_config, style.fusion_state, style.decoder_delta, self.e_src.detach().cpu(),
                              self.e_src_image.detach().float().cpu(), style.metadata)


def check_checkpoint_dir(path: str | Path | None, label: str = "checkpoint directory") -> None:
    """A checkpoint directory that is a file is refused (the file left alone); the CLI asks before models load."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise FileExistsError(f"{label} {path} is a file, not a folder: give a folder (a new one, or the one of the "
                              "run to --resume)")


def _differences(mine: dict[str, Any], theirs: Any, prefix: str = "") -> list[str]:
    """What differs between this run's identity and a checkpoint's, by name ('recipe.lr 0.002 in the checkpoint,
    0.001 now'), so a user who resumed with another flag sees which one. Fields only the checkpoint has are
    not compared: an older version's free field (since dropped from the identity) must not block a resume."""
    theirs = theirs if isinstance(theirs, dict) else {}
    out = []
    for k in sorted(mine):
        a, b = mine[k], theirs.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif k not in theirs:
            out.append(f"{prefix}{k} not recorded in the checkpoint, {_shown(a)} now")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{prefix}{k} {_shown(b)} in the checkpoint, {_shown(a)} now")
    return out


def _shown(value: Any) -> str:
    """A value of a run's identity as the resume error shows it: 0.002, 'auto', {"width": 16} (one form for
    scalars and nested fields, so a field that became nested, or stopped being, reads as the change it is)."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list, tuple)) else repr(value)


@runs_on_device_of("vae")
def train_universal(vae, text, images, bank, config: UniversalConfig | None = None, vgg=None, lpips=None,
                    dist: Dist | None = None, checkpoint_dir=None, resume: bool = False,
                    on_log: Callable[[LogLine], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> UniversalResult:
    """Train a universal model over ``bank`` x ``images`` (see :class:`UniversalConfig`); on every rank of a job.
    Without ``should_stop``, Ctrl-C / SIGTERM / SIGHUP stop after the current step (a checkpoint is written if there
    is a ``checkpoint_dir``; the result says ``cancelled``) instead of losing the run."""
    with naming_a_stopped_rank(dist or Dist()):  # another process gone: say so, not torch's socket error
        trainer = UniversalTrainer(vae, text, images, bank, config, vgg, lpips, dist, checkpoint_dir, resume)
        if should_stop is not None:
            return trainer.run(on_log, should_stop)
        return run_until_ctrl_c(trainer, on_log)


def run_until_ctrl_c(trainer: UniversalTrainer, on_log: Callable[[LogLine], None] | None = None) -> UniversalResult:
    """``trainer.run`` that a Ctrl-C / SIGTERM / SIGHUP stops after the current step: train_universal's and the
    CLI's."""
    keeps = "writing a checkpoint" if trainer.checkpoint_dir is not None else "returning the model trained so far"
    with StopRequest(announce=trainer.dist.is_main, keeps=keeps) as stop:
        result = trainer.run(on_log, lambda: stop.asked)
    result.signum = stop.signum if result.cancelled else None
    return result


# ------------------------------------------------------------------------------------------ using it
def universal_direction(universal: UniversalModel, text, prompt: str | None = None,
                        reference: torch.Tensor | None = None, name: str = "reference image") -> TextDirection:
    """A conditioning for ``universal``: a prompt, or reference picture(s) compared with its training photos.

    Encoded with ``text``, which must be the image-text model the universal model was trained with.
    """
    if (prompt is None) == (reference is None):
        raise ValueError("give a style prompt or a reference image (exactly one) to make a style from the universal "
                         "model")
    source = str(universal.metadata.get("source_prompt") or "a plain photo")
    if prompt is not None:
        direction = TextDirection.encode(text, prompt, source_prompt=source)
    else:
        direction = TextDirection.from_reference(text, reference, source_image_embedding=universal.source_image_embedding,
                                                 source_prompt=source, name=name)
    _check_text_model(universal, direction)
    return direction


def style_from_universal(universal: UniversalModel, direction: TextDirection) -> Style:
    """The style of ``direction`` (a prompt's or a reference image's): the universal model conditioned on its e_t.

    Stylize, Mix Styles and Save Style take it like any trained style; the fusion weights and decoder delta are
    the universal model's (shared, not copied), the embedding is ``direction.e_t``.
    """
    _check_text_model(universal, direction)
    return universal.style(direction.e_t, {**direction.metadata(), "name": f"{direction.prompts[0]} (universal)"})


def encodes_alike(stored: torch.Tensor | Sequence[float], e_src: torch.Tensor) -> bool:
    """Whether two embeddings of the same source prompt come from the same text model's weights: its name cannot
    tell (a Hugging Face id and a local folder of one model differ; a fine-tune, or another model in a folder of
    that name, agree)."""
    a = torch.as_tensor(stored, dtype=torch.float32).reshape(-1)
    b = e_src.detach().float().cpu().reshape(-1)
    return a.numel() == b.numel() and float(F.cosine_similarity(a, b, dim=0)) > 0.999


def _check_text_model(universal: UniversalModel, direction: TextDirection) -> None:
    """Refuse a conditioning from another image-text model (its embedding space is not the one trained on).

    Names differ between a Hugging Face id and a local folder of the same model, so the test is what the
    model computes where possible: the source prompt's embedding must be the one stored in the universal model.
    """
    source = str(universal.metadata.get("source_prompt") or "")
    stored = universal.source_embedding.float().reshape(-1)
    same = direction.embeddings.shape[1] == stored.numel()
    if same and source and direction.source_prompt != source:
        # only the source prompt's embedding tells the weights apart (names agree for a fine-tune, or another
        # model in a folder of that name): with another source prompt nothing could be checked
        raise ValueError(f"the conditioning's source prompt '{direction.source_prompt}' is not the one universal "
                         f"model '{universal.name}' was trained against ('{source}'), whose embedding shows that the "
                         f"prompt was encoded by the right text model: set source_prompt to '{source}' in Text "
                         "Conditioning")
    if same and direction.source_prompt == source:
        same = encodes_alike(stored, direction.e_src)
    elif same and universal.text_model:
        same = direction.text_model.rstrip("/").split("/")[-1] == universal.text_model.rstrip("/").split("/")[-1]
    if not same:
        encoded = (f"another model named '{direction.text_model}' (its embedding of the source prompt '{source}' is "
                   "not the stored one: other weights)" if direction.text_model == universal.text_model
                   else f"'{direction.text_model}'")
        raise ValueError(f"universal model '{universal.name}' was trained with the text model '{universal.text_model}' "
                         f"but the conditioning was encoded with {encoded}: encode the prompt with the model it was "
                         "trained with (its embedding space is the only one it knows)")
