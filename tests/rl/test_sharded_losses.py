"""Every policy loss x loss_type gives the same loss and gradient with its rows sharded over 8 simulated devices
as on one device (float64, so the only difference is the order of the cross-device sums: rtol 1e-12 / 1e-10).

Runs tests/rl/scripts/sharded_losses.py as its own process: the CPU device count is fixed when JAX starts."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_sharded_rows_give_the_single_device_loss_and_gradient():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "tests/rl/scripts/sharded_losses.py"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count(" ok") == 24, result.stdout
