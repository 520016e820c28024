"""Where a run's step metrics and sample tables go besides metrics.jsonl / samples.jsonl: TensorBoard event
files and Weights & Biases, chosen by `train.report_to` and written by the main process only.

Each writer takes the same two calls as the JSONL log: `metrics(step, {name: float})` once a step, and
`samples(step, rows)` with the rows of samples.jsonl (prompt, completion, length, per-function rewards,
advantage).
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
from etils import epath

from rlreason.config import Config, ConfigError, to_dict


class MetricWriter(Protocol):
    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def samples(self, step: int, rows: list[dict]) -> None: ...

    def close(self) -> None: ...


def samples_markdown(rows: list[dict]) -> str:
    """A sample table as Markdown (TensorBoard's text plugin renders it): one row per completion."""
    names = list(rows[0]["rewards"]) if rows else []
    escape = lambda text: str(text).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    lines = ["| prompt | completion | length | " + " | ".join(names) + " | advantage |",
             "|" + "---|" * (4 + len(names))]
    for row in rows:
        rewards = [("" if row["rewards"][name] is None else f"{row['rewards'][name]:.3g}") for name in names]
        lines.append(f"| {escape(row['prompt'])} | {escape(row['completion'])} | {row['length']} | "
                     + " | ".join(rewards) + f" | {row['advantage']:.3g} |")
    return "\n".join(lines)


class TensorBoardWriter:
    """Event files under `<out_dir>/tensorboard`: a scalar per metric, the sample table as text ("samples")."""

    def __init__(self, log_dir: epath.Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(log_dir))

    def _add(self, step: int, summary) -> None:
        from tensorboard.compat.proto import event_pb2

        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import summary_pb2

        self._add(step, summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=name, simple_value=value)
                                                   for name, value in values.items() if name != "step"]))

    def samples(self, step: int, rows: list[dict]) -> None:
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.text import metadata
        from tensorboard.util import tensor_util

        text = tensor_util.make_tensor_proto(np.array(samples_markdown(rows), dtype=object))
        value = summary_pb2.Summary.Value(
            tag="samples", tensor=text,
            metadata=metadata.create_summary_metadata(display_name="samples", description="prompts and completions"))
        self._add(step, summary_pb2.Summary(value=[value]))

    def close(self) -> None:
        self._writer.close()


class WandbWriter:
    """A Weights & Biases run (offline unless `train.wandb_mode: online`) under `<out_dir>/wandb`: the metrics
    per step, the samples as a table, the config as the run's config."""

    def __init__(self, cfg: Config, out_dir: epath.Path):
        try:
            import wandb
        except ImportError:
            raise ConfigError("config key 'train.report_to' names wandb, which is not installed: pip install wandb, "
                              "or drop it from train.report_to") from None
        self._wandb = wandb
        out_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=cfg.train.wandb_project, dir=str(out_dir), mode=cfg.train.wandb_mode,
                               config=to_dict(cfg), settings=wandb.Settings(silent=True))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._run.log({name: value for name, value in values.items() if name != "step"}, step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        names = list(rows[0]["rewards"]) if rows else []
        table = self._wandb.Table(columns=["prompt", "completion", "length", *names],
                                  data=[[row["prompt"], row["completion"], row["length"],
                                         *(row["rewards"][name] for name in names)] for row in rows])
        self._run.log({"samples": table}, step=step)

    def close(self) -> None:
        self._run.finish()


WRITERS = {
    "tensorboard": lambda cfg, out_dir: TensorBoardWriter(out_dir / "tensorboard"),
    "wandb": WandbWriter,
}


def open_writers(cfg: Config, out_dir: epath.Path) -> list[MetricWriter]:
    """The writers `train.report_to` names, for the main process."""
    return [WRITERS[name](cfg, out_dir) for name in cfg.train.report_to]
