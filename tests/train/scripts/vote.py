"""One process of a run voting with `any_process` after each of 5 steps; prints what it was told, as JSON.

usage: python vote.py PROCESS_ID NUM_PROCESSES PORT

Each process raises the first flag at one step of its own (process i at step 2 + i) and the second flag never;
every process must be told the first flag is set from the earliest of those steps on, as the training loop's
"stop requested" vote would be.
"""

from __future__ import annotations

import json
import sys

from rlreason.config import DistributedConfig
from rlreason.parallel.distributed import initialize
from rlreason.train.preemption import any_process

STEPS = 5


def main(process_id: int, num_processes: int, port: int) -> None:
    initialize(DistributedConfig(mode="manual", coordinator_address=f"127.0.0.1:{port}",
                                 num_processes=num_processes, process_id=process_id, local_device_count=1,
                                 heartbeat_timeout_s=10))
    told = [any_process([step >= 2 + process_id, False]) for step in range(1, STEPS + 1)]
    print(json.dumps(told))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
