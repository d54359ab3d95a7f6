"""``python -m cloudsr_hpc.train --config configs/stage1.yaml [--set train.steps=100 ...]``

Works as one process, under ``torchrun``, the ``deepspeed`` launcher (which passes --local_rank),
``mpiexec`` and ``srun``.  Exit codes: 0 done, 75 checkpointed after SIGTERM/SIGUSR1 (run again
to resume), 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .cli import guarded, setup_process
from .config import load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloudsr_hpc.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="stage YAML, e.g. configs/stage1.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    setup_process()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return guarded(_train, args)


def _train(args) -> int:
    from .schema import StageConfig
    cfg = load(StageConfig, args.config, args.set)
    from .training.distributed import init_distributed
    from .training.trainer import Trainer
    dist = init_distributed()
    logging.getLogger("cloudsr_hpc").info("rank %d of %d on %s", dist.rank, dist.world, dist.device)
    if dist.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    return Trainer(cfg, dist).fit()


if __name__ == "__main__":
    sys.exit(main())
