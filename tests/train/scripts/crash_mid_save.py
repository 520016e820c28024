"""Saves checkpoint 1, starts saving checkpoint 2 and dies at once, as a process killed mid-save does.

usage: python crash_mid_save.py CONFIG [key=value ...]   (the overrides name checkpoint.dir and the model)

Step 1 holds the initial state; step 2 the same state with its step counter set to 2. `os._exit` ends the
process without waiting for the save in flight, while orbax is still writing it.
"""

from __future__ import annotations

import os
import sys

from rlreason.config import load_config
from rlreason.train.checkpoint import RunCheckpoints
from rlreason.train.loop import build_trainer


def main(config: str, overrides: list[str]) -> None:
    cfg = load_config(config, overrides)
    trainer = build_trainer(cfg)
    checkpoints = RunCheckpoints(cfg)
    checkpoints.save(1, trainer.state, trainer.batches, {"reward": 0.0})
    checkpoints.close()
    checkpoints = RunCheckpoints(cfg)
    checkpoints.save(2, trainer.state.replace(step=trainer.state.step + 2), trainer.batches, {"reward": 0.0})
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
