"""call AM: the emulated 8 GB card with the decoder trained in channels_last (opt-in) after LPIPS keeps the content
features (callAC: x1.297 against the 1.25 target, which blocked channels_last as the default). `bench --memory-caps`
with every recipe's TrainConfig(channels_last=True)."""
import sys
from stylemamba.experiments import bench as B
from stylemamba.cli import main
_train_config = B.Sizes.train_config
def channels_last_config(self, *args, **kwargs):
    cfg = _train_config(self, *args, **kwargs)
    cfg.channels_last = True
    return cfg
B.Sizes.train_config = channels_last_config
sys.exit(main(["bench", "--memory-caps", "8", "--memory-caps-only", "--caps-repeats", "2", "--json", sys.argv[1]]))
