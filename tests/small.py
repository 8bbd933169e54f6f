"""Small recipes and helpers shared by the training, style-file, stylise and CLI tests."""
from stylemamba.fusion import FusionConfig
from stylemamba.losses import PAPER_VGG_TERM, LossConfig
from stylemamba.train import TrainConfig


def small_config(**overrides) -> TrainConfig:
    """The paper's recipe shrunk to CPU-test size (64 px, few crops, a narrow fusion module).

    The VGG content loss is ON here, as 0.1.0 had it (raw mean, 9000 -> 150), so the tests run its path (micro-
    batches, compile, checkpoints) with the figures they were written for; the library's default has it off
    (docs/METHOD_CHOICES.md item 5).
    """
    loss = dict(n_crops=4, crop_fraction=0.5, mask_patch=16, so_interval=2, so_theta=2.0, **PAPER_VGG_TERM)
    loss.update(overrides.pop("loss", {}))
    fusion = dict(width=32, depth=2, d_state=4)
    fusion.update(overrides.pop("fusion", {}))
    cfg = dict(epochs=4, resolution=64, lr_decay_epoch=2, seed=0)
    cfg.update(overrides)
    return TrainConfig(loss=LossConfig(**loss), fusion=FusionConfig(**fusion), **cfg)
