"""One process of a multi-process run raises while its peer waits for it in a collective.

usage: python fail_on_one_process.py CONFIG key=value...   (as the --program of launch/local.py)

Both processes gather an array once (so the collectives' connections are up, as after a training step); then
process 1 raises while process 0 gathers again, which cannot complete. The run must end at once with process
1's error instead of hanging.
"""

from __future__ import annotations

import sys

from rlreason.config import load_config
from rlreason.parallel import distributed

cfg = load_config(sys.argv[1], sys.argv[2:])
distributed.initialize(cfg.distributed)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

multihost_utils.process_allgather(np.zeros(1))
if jax.process_index() == 1:
    raise RuntimeError("process 1 failed on purpose")
multihost_utils.process_allgather(np.zeros(1))
