"""Weights & Biases logging (offline by default) and a reader for offline runs.

Mode `auto` logs online only when the user configured W&B (`WANDB_MODE=online` or `WANDB_API_KEY`), else
offline: the run is written under `<dir>/wandb/offline-run-*` and can be uploaded later with `wandb sync`.
`disabled` turns W&B off. Every run also writes `metrics.jsonl` in its run_dir, whatever the W&B mode.

W&B's own terminal output (its banner, then a run history and summary of dozens of lines at `finish()`) is
silenced unless `wandb.verbose` is true; instead each run prints one line saying where it is and how to
upload it (`run_line`), so a comparison's own progress lines stay readable.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from localdpo.storage.fileio import atomic_write_text
from localdpo.trainer.config import RunConfig, WandbMode, to_dict


def run_line(mode: str, run_path: Path, url: str | None = None) -> str:
    """The one terminal line about a finished W&B run: where its files are and how to upload them, or its URL."""
    if mode == "online":
        return f"W&B: run at {url or run_path}"
    return f"W&B: offline run saved; upload it with: wandb sync {run_path}"


def resolve_mode(mode: WandbMode | str) -> str:
    """`online`, `offline` or `disabled` for a configured mode (`auto` looks at the environment)."""
    mode = WandbMode(mode)
    if mode is not WandbMode.AUTO:
        return mode.value
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class RunLogger:
    """Writes metrics to W&B (when enabled) and to `run_dir/metrics.jsonl`; only rank 0 should create one."""

    def __init__(self, config: RunConfig, run_dir: Path, *, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.mode = resolve_mode(config.wandb.mode)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step == 0 and self.metrics_path.exists():
            self.metrics_path.unlink()
        elif resume_step:
            self._truncate_after(resume_step)
        self.run = None
        self.verbose = config.wandb.verbose
        if self.mode != "disabled":
            import wandb

            wandb_dir = Path(config.wandb.dir) if config.wandb.dir else self.run_dir
            wandb_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=config.wandb.project,
                group=config.wandb.group,
                name=config.wandb.name or self.run_dir.name,
                tags=list(config.wandb.tags) or None,
                dir=str(wandb_dir),
                mode=self.mode,
                config=to_dict(config),
                job_type=config.method.value,
                reinit="create_new",
                settings=None if self.verbose else wandb.Settings(silent=True),
            )

    def _truncate_after(self, step: int) -> None:
        """Drop metrics logged after `step` by a run that was killed and is being resumed from `step`."""
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line and json.loads(line)["step"] <= step
        ]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def log(self, metrics: dict[str, float], step: int) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(dict(metrics, step=step)) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    @property
    def run_path(self) -> Path | None:
        """Directory of the W&B run (`.../wandb/offline-run-...`), None when disabled."""
        return Path(self.run.dir).parent if self.run is not None else None

    def finish(self) -> None:
        """Close the W&B run and, unless W&B speaks for itself (`wandb.verbose`), print `run_line`."""
        if self.run is not None:
            line = run_line(self.mode, self.run_path, self.run.url if self.mode == "online" else None)
            self.run.finish()
            self.run = None
            if not self.verbose:
                print(line, flush=True)


def _records(path: Path):
    """Raw records of a `.wandb` file: a LevelDB-style log (7-byte header, 32 KiB blocks, chunked records)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a .wandb file")
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            yield payload
        elif kind == 2:  # first
            pending = payload
        elif kind == 3:  # middle
            pending += payload
        elif kind == 4:  # last
            yield pending + payload


def read_offline_run(run_path: str | os.PathLike) -> dict[str, Any]:
    """`{"config", "history", "summary", "group", "name"}` read back from an offline run directory (or .wandb file).

    `history` is the list of logged rows (dicts with `_step`); `summary` the last value of each key;
    `complete` whether the run's exit record is there (W&B's service may still be flushing just after `finish()`).
    Parsed with W&B's own protobuf `Record`.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(run_path)
    if path.is_dir():
        files = sorted(path.glob("*.wandb"))
        if not files:
            raise FileNotFoundError(f"no .wandb file in {path}")
        path = files[0]
    out: dict[str, Any] = {
        "config": {},
        "history": [],
        "summary": {},
        "group": None,
        "name": None,
        "complete": False,
    }
    for raw in _records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["name"] = record.run.run_group, record.run.display_name
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "exit":
            out["complete"] = True
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
