import json
import random

import pytest
import torch

from localdpo.trainer.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)


def _save(root, step, value=1.0):
    return save_checkpoint(
        root,
        step,
        tensors={"w": torch.full((3,), value)},
        optimizer={"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        scheduler={"last_epoch": step},
        rng=capture_rng_state(),
        state={"consumed": step * 4},
    )


def test_round_trip(tmp_path):
    path = _save(tmp_path, 7, value=2.5)
    assert path.name == "step-000007"
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.tensors["w"], torch.full((3,), 2.5))
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], torch.ones(3))
    assert loaded.scheduler == {"last_epoch": 7}
    assert loaded.state == {"consumed": 28, "step": 7}
    assert set(json.loads((path / "manifest.json").read_text())["files"]) == {
        "model.safetensors",
        "optimizer.pt",
        "rng.pt",
        "state.json",
    }


def test_eval_items_round_trip_and_are_verified(tmp_path):
    items = {"initial/chosen_nll": torch.tensor([0.5, 1.25], dtype=torch.float64)}
    path = save_checkpoint(
        tmp_path, 3, tensors={"w": torch.ones(2)}, optimizer={}, scheduler={}, rng={}, state={}, items=items
    )
    assert "eval_items.safetensors" in json.loads((path / "manifest.json").read_text())["files"]
    loaded = load_checkpoint(path)
    assert loaded.items.keys() == items.keys()
    assert torch.equal(loaded.items["initial/chosen_nll"], items["initial/chosen_nll"])
    assert load_checkpoint(_save(tmp_path / "other", 1)).items == {}
    raw = bytearray((path / "eval_items.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (path / "eval_items.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="eval_items.safetensors"):
        load_checkpoint(path)


def test_rng_state_restores_python_and_torch():
    state = capture_rng_state()
    expected = (random.random(), torch.rand(2))
    random.random(), torch.rand(5)
    restore_rng_state(state)
    assert random.random() == expected[0]
    assert torch.equal(torch.rand(2), expected[1])


def test_corrupted_checkpoint_is_refused_and_skipped(tmp_path):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: sha256 does not match"):
        verify_checkpoint(newest)
    with pytest.warns(UserWarning, match="does not verify"):
        assert latest_checkpoint(tmp_path).name == "step-000002"


def test_kill_during_a_write_leaves_nothing_loadable(tmp_path):
    """A writer killed before the rename leaves only a hidden temporary directory; one killed after some files
    but before the manifest (simulated by deleting it) leaves a directory that never loads."""
    _save(tmp_path, 2)
    (tmp_path / ".tmp-step-000004-abc").mkdir()
    (tmp_path / ".tmp-step-000004-abc" / "model.safetensors").write_bytes(b"partial")
    half = _save(tmp_path, 6)
    (half / "manifest.json").unlink()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000006"]
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(half)
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path).name == "step-000002"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    (tmp_path / ".tmp-step-000005-x").mkdir()
    prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    assert not list(tmp_path.glob(".tmp-*"))


def _sharded(tmp_path, files):
    from localdpo.trainer.checkpoint import SHARDED, publish_checkpoint

    tmp = tmp_path / ".tmp-step-000002-x"
    tmp.mkdir()
    for name in files:
        (tmp / name).write_bytes(name.encode())
    return publish_checkpoint(tmp, tmp_path, 2, state={"consumed": 8}, items=None, layout=SHARDED)


def test_a_sharded_checkpoint_is_refused_by_the_unsharded_loader_naming_fsdp(tmp_path):
    path = _sharded(tmp_path, [".metadata", "__0_0.distcp", "scheduler.pt", "rng-rank0.pt"])
    assert verify_checkpoint(path)["layout"] == "sharded"
    with pytest.raises(CheckpointError, match="train.distributed=fsdp"):
        load_checkpoint(path)


def test_a_sharded_checkpoint_without_its_dcp_metadata_does_not_verify(tmp_path):
    path = _sharded(tmp_path, ["__0_0.distcp", "scheduler.pt", "rng-rank0.pt"])
    with pytest.raises(CheckpointError, match="does not list .metadata"):
        verify_checkpoint(path)


class _Saves:
    """Stands in for a model or tokenizer: `save_pretrained` writes one file, or fails after writing it."""

    def __init__(self, name, fail=False):
        self.name, self.fail = name, fail

    def save_pretrained(self, directory, **kwargs):
        (directory / self.name).write_text("new")
        if self.fail:
            raise RuntimeError("disk full")


def test_a_failed_final_save_keeps_the_old_final_model(tmp_path):
    """Regression: `save_final_model` deleted the old `final/` before renaming the new one in (and fsynced
    nothing), so a failure or a kill there lost both. Now the old one stays until the new one is whole."""
    from localdpo.trainer.checkpoint import save_final_model

    final = save_final_model(_Saves("model.safetensors"), _Saves("tokenizer.json"), tmp_path)
    assert sorted(p.name for p in final.iterdir()) == ["model.safetensors", "tokenizer.json"]
    (final / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        save_final_model(_Saves("model.safetensors"), _Saves("tokenizer.json", fail=True), tmp_path)
    assert (final / "model.safetensors").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # no temporary directory left
    save_final_model(_Saves("model.safetensors"), _Saves("tokenizer.json"), tmp_path)
    assert (final / "model.safetensors").read_text() == "new"
