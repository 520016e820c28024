"""A sharded forward pass under a config, in one process or as one of several (launch/local.py).

usage: python distributed_forward.py CONFIG key=value...   (train.out_dir says where results go)

Every process starts the distributed runtime from `distributed.*`, builds the mesh from `mesh.*`, creates the
parameters sharded, feeds only its own rows of a global batch, runs the forward pass, gathers the logits back
and writes them (logits_pI.npy) with what it saw of the run (process_pI.json). A single process also writes
the logits of an unsharded run on one device (reference_logits.npy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlreason.config import load_config
from rlreason.parallel import distributed

cfg = load_config(sys.argv[1], sys.argv[2:])
distributed.initialize(cfg.distributed)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlreason.models.transformer import forward, init_params, positions_from_mask  # noqa: E402
from rlreason.parallel.host_data import gather_rows, global_batch, process_rows  # noqa: E402
from rlreason.parallel.mesh import make_mesh  # noqa: E402
from rlreason.parallel.rules import axis_rules, param_shardings  # noqa: E402
from rlreason.parallel.sharded_init import init_params_sharded  # noqa: E402

BATCH, LENGTH = 8, 12


def global_inputs() -> dict[str, np.ndarray]:
    """The same left-padded batch in every process: tokens, mask and positions [BATCH, LENGTH]."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(2, LENGTH + 1, BATCH)
    mask = np.arange(LENGTH)[None, :] >= LENGTH - lengths[:, None]
    tokens = np.where(mask, rng.integers(1, cfg.model.vocab_size, (BATCH, LENGTH)), 0).astype(np.int32)
    return {"tokens": tokens, "mask": mask, "positions": np.asarray(positions_from_mask(mask))}


def main() -> None:
    out_dir = Path(cfg.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    me = jax.process_index()
    rules = axis_rules(cfg.mesh)
    mesh = make_mesh(cfg.mesh)
    rng = jax.random.key(cfg.train.seed)
    params = init_params_sharded(cfg.model, rng, param_shardings(cfg.model, mesh, rules))
    inputs = global_inputs()
    rows = process_rows(mesh, BATCH, rules)
    batch = global_batch({key: value[rows] for key, value in inputs.items()}, mesh, BATCH, rules)
    logits, _ = jax.jit(forward, static_argnums=4)(params, batch["tokens"], batch["positions"], batch["mask"],
                                                   cfg.model)
    np.save(out_dir / f"logits_p{me}.npy", gather_rows(logits))
    (out_dir / f"process_p{me}.json").write_text(json.dumps({
        "process_count": jax.process_count(), "is_main": distributed.is_main_process(),
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "rows": [rows.start, rows.stop], "batch_is_global": batch["tokens"].shape[0] == BATCH}))
    if jax.process_count() == 1:
        reference = jax.jit(forward, static_argnums=4)(jax.jit(init_params, static_argnums=0)(cfg.model, rng),
                                                       inputs["tokens"], inputs["positions"], inputs["mask"],
                                                       cfg.model)[0]
        np.save(out_dir / "reference_logits.npy", np.asarray(reference))


if __name__ == "__main__":
    main()
