"""Started under torchrun by test_multiprocess.py (not a test itself): trains with lmforge's
own runner, then writes this process's trainable weights (the adapter and any value head) to
OUT/rank<RANK>.safetensors, so the test can compare what each process ended with.

    python -m torch.distributed.run --nproc_per_node=2 ddp_worker.py CONFIG.yaml OUT
"""

import os
import sys

from safetensors.torch import save_file

from lmforge.config import load_config
from lmforge.train.run import run_training


def main(config_path: str, out_dir: str) -> None:
    run = run_training(load_config(config_path))
    weights = {
        name: param.detach().cpu().contiguous()
        for name, param in run.model.named_parameters()
        if param.requires_grad
    }
    save_file(weights, os.path.join(out_dir, f"rank{os.environ['RANK']}.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])
