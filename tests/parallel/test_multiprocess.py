"""Two local processes of 2 CPU devices (started by launch/local.py, as a real multi-host run would be) give
the same logits as one process of 4 devices and as one unsharded device.

Each process starts the distributed runtime, creates its parameter shards, feeds only its own rows of the
global batch and gathers the logits back. Tolerance 1e-5 absolute (float32 logits up to about 1.2; measured
on the three meshes: at most 2.4e-7 between the 2-process and 1-process runs, 3.0e-7 against one device).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess

WORKER = "tests/parallel/scripts/distributed_forward.py"
ATOL = 1e-5


@pytest.mark.parametrize("mesh, process_rows", [
    ((2, 1, 2), [[0, 4], [4, 8]]),  # data parallel across processes, tensor parallel within each
    ((1, 4, 1), [[0, 4], [4, 8]]),  # FSDP across processes: weight shards gathered over the process boundary
    ((1, 1, 4), [[0, 8], [0, 8]]),  # tensor parallel across processes: the batch is not split, both feed all rows
])
def test_two_processes_match_one_process_and_one_device(tmp_path, run_python, mesh, process_rows):
    data, fsdp, tensor = mesh
    settings = ["configs/cpu_8dev.yaml", f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"]
    run_python(["launch/local.py", "--num-processes", "2", "--devices-per-process", "2", "--timeout", "240",
                "--heartbeat-timeout", "10", "--program", f"{sys.executable} {WORKER}",
                *settings, f"train.out_dir={tmp_path / 'two'}"], timeout=300)
    run_python([WORKER, *settings, "distributed.local_device_count=4", f"train.out_dir={tmp_path / 'one'}"],
               timeout=300)

    reports = [json.loads((tmp_path / "two" / f"process_p{index}.json").read_text()) for index in range(2)]
    assert [report["is_main"] for report in reports] == [True, False]
    assert all(report["process_count"] == 2 and report["devices"] == 4 and report["local_devices"] == 2
               and report["batch_is_global"] for report in reports)
    assert [report["rows"] for report in reports] == process_rows

    one_process = np.load(tmp_path / "one" / "logits_p0.npy")
    reference = np.load(tmp_path / "one" / "reference_logits.npy")
    assert one_process.shape == reference.shape == (8, 12, 256)
    np.testing.assert_allclose(one_process, reference, rtol=0, atol=ATOL)
    for index in range(2):
        np.testing.assert_allclose(np.load(tmp_path / "two" / f"logits_p{index}.npy"), one_process, rtol=0, atol=ATOL)
