"""Train one method on steers: `python experiments/train.py --config experiments/configs/tiny.yaml key=value ...`.

Thin wrapper of `localdpo train` (also runs under `torchrun --nproc_per_node N experiments/train.py ...`).
"""

import sys

from localdpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
