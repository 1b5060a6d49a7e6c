"""Training from the studio (`localdpo.studio.training`) with the tiny model: a real `localdpo train` process on
a snapshot of the steer file, its progress, Stop, the held-out metrics, compare, and steering the tuned model."""

import json
import shutil
import stat
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from localdpo.models.loading import tiny_model
from localdpo.reference.fingerprint import model_label
from localdpo.steers.steer import load_steers
from localdpo.studio.app import create_app
from localdpo.studio.errors import StudioError
from localdpo.studio.session import ModelRunner, Studio, load_tuned
from localdpo.studio.store import SteerStore
from localdpo.studio.training import (
    METHODS,
    MIN_STEERS,
    Training,
    hold_out_counts,
    read_metrics,
    runs_dir,
)
from localdpo.trainer.steerdata import split_steers

TOKEN = "test-token"
COLOR_STEERS = Path(__file__).resolve().parents[1] / "trainer" / "data" / "color_steers.jsonl"
SMALL_EVAL = ("eval.drift_num_prompts=2", "eval.drift_max_new_tokens=4", "data.max_length=128")


@pytest.fixture(scope="module")
def runner(smol_tokenizer):
    model, tokenizer = tiny_model(tokenizer=smol_tokenizer)
    return ModelRunner(model, tokenizer, "tiny")


@pytest.fixture
def steers_path(tmp_path):
    path = tmp_path / "steers.jsonl"
    lines = COLOR_STEERS.read_text().splitlines()[:6]
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def client(runner, steers_path, tmp_path):
    training = Training(
        steers_path, "tiny", "cpu", extra_overrides=(*SMALL_EVAL, f"cache_dir={tmp_path / 'cache'}")
    )
    studio = Studio(runner, SteerStore(steers_path), token_limit=64, training=training)
    with TestClient(
        create_app(studio, token=TOKEN), base_url="http://127.0.0.1", headers={"X-Studio-Token": TOKEN}
    ) as c:
        c.studio = studio
        yield c


def training_updates(client) -> list[dict]:
    """Every status the training stream sends, to the run's end."""
    with client.stream("GET", "/api/training/stream") as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line]


def answer(client, session: str, segment: int = 0) -> list[dict]:
    with client.stream("GET", f"/api/sessions/{session}/segments/{segment}/stream") as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line]


def test_hold_out_counts_are_the_trainers_split():
    """The page states the split before the run: the same counts `split_steers` (the trainer's) makes."""
    for n in range(MIN_STEERS, 40):
        train, held = split_steers(list(range(n)), 0.2, 0)
        assert hold_out_counts(n) == (len(train), len(held))
    assert hold_out_counts(6) == (5, 1) and hold_out_counts(10) == (8, 2)


def test_methods_are_trainer_overrides():
    assert METHODS["sft"] == ("method=sft",)
    assert METHODS["ldpo+sft"] == ("method=ldpo", "loss.sft_weight=1.0")
    assert METHODS["ldpo_ipo"] == ("method=ldpo", "loss.loss_type=ipo")
    assert {"ldpo", "dpo", "ldpo_apo_zero", "ldpo_dpop", "ldpo_cal_dpo", "sft+ul"} <= set(METHODS)


def test_read_metrics_leaves_out_a_line_being_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "eval/rewards_margins": 0.0}\n{"step": 1, "train/lo')
    assert read_metrics(path) == [{"step": 0, "eval/rewards_margins": 0.0}]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_train_compare_and_steer_the_tuned_model(client, steers_path):
    """6 steers: 5 train, 1 held out; 2 steps of ldpo in a `localdpo train` process; the steer file is never
    written; then compare, switch to the tuned model, and a steer saved from it names it."""
    before = steers_path.read_bytes()
    info = client.get("/api/training").json()
    assert (info["steers"], info["train_steers"], info["held_out"]) == (6, 5, 1)
    assert info["runs"] == [] and info["current"] is None and info["active"]["tuned"] is False

    started = client.post("/api/training", json={"method": "ldpo", "steps": 2, "lr": 1e-3, "batch_size": 2})
    assert started.status_code == 200, started.text
    run = started.json()
    assert run["state"] == "preparing" and run["running"] and (run["train_steers"], run["held_out"]) == (5, 1)
    run_dir = runs_dir(steers_path) / run["run"]
    assert run["run"].endswith("-ldpo") and run_dir.is_dir()
    snapshot = run_dir / "steers.jsonl"
    assert snapshot.read_bytes() == before and not snapshot.stat().st_mode & stat.S_IWUSR

    updates = training_updates(client)
    final = updates[-1]
    assert final["state"] == "done", final["log"]
    assert final["step"] == 2 and [step for step, _ in final["losses"]] == [1, 2]
    assert [e["step"] for e in final["evals"]] == [0, 2]
    start_eval, end_eval = final["evals"]
    assert start_eval["preference_accuracy"] == 0.0 and start_eval["margin"] == 0.0  # policy == reference
    assert {"preference_accuracy", "recurrence", "uptake", "drift_kl"} <= set(end_eval)
    assert final["final"] == end_eval
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert end_eval["preference_accuracy"] == rows[-1]["eval/preference_accuracy"]
    assert steers_path.read_bytes() == before  # the training process never wrote the steer file
    assert client.get("/api/training").json()["runs"] == [run["run"]]

    compared = client.post(
        "/api/compare", json={"prompt": "Name three colours.", "max_new_tokens": 6, "run": run["run"]}
    )
    assert compared.status_code == 200, compared.text
    sides = compared.json()
    assert sides["start"]["model"] == "tiny" and sides["tuned"]["model"] == f"tiny+{run['run']}"
    assert sides["start"]["rejected_by"] != sides["tuned"]["rejected_by"]
    for side in sides.values():
        events = answer(client, side["session"])
        assert events[-1]["type"] == "end" and events[-1]["tokens"] == 6

    start_label = client.studio.start_runner.label
    switched = client.post("/api/model", json={"run": run["run"]}).json()
    assert switched["tuned"] and switched["model"] == f"tiny+{run['run']}" and switched["round"] == 2
    assert switched["rejected_by"] != start_label and switched["rejected_by"].startswith(
        f"tiny+{run['run']}@"
    )
    assert client.get("/api/info").json()["rejected_by"] == switched["rejected_by"]
    session = client.post("/api/sessions", json={"prompt": "Name three colours.", "max_new_tokens": 8}).json()
    answer(client, session["session"])
    saved = client.post(
        f"/api/sessions/{session['session']}/steers", json={"segment": 0, "cut": 2, "chosen": "red"}
    )
    assert saved.status_code == 200, saved.text
    steer = load_steers(steers_path)[-1]
    assert (steer.rejected_by, steer.round) == (switched["rejected_by"], 2)

    back = client.post("/api/model", json={}).json()
    assert (back["tuned"], back["rejected_by"], back["round"]) == (False, start_label, 1)


def test_stop_ends_the_process_and_steering_goes_on(client, steers_path):
    """A long run is stopped after its first step (SIGTERM): it says where it stopped and leaves no adapter;
    a second run is refused while it trains; generating and saving steers go on meanwhile."""
    started = client.post(
        "/api/training", json={"method": "sft", "steps": 10_000, "lr": 1e-3, "batch_size": 2}
    )
    assert started.status_code == 200, started.text
    again = client.post("/api/training", json={"method": "sft"})
    assert again.status_code == 409 and "still training" in again.json()["error"]

    session = client.post("/api/sessions", json={"prompt": "Name three colours.", "max_new_tokens": 8}).json()
    answer(client, session["session"])
    saved = client.post(
        f"/api/sessions/{session['session']}/steers", json={"segment": 0, "cut": 2, "chosen": "red"}
    )
    assert saved.status_code == 200 and saved.json()["steers"] == 7

    with client.stream("GET", "/api/training/stream") as response:
        for line in response.iter_lines():
            if line and json.loads(line)["state"] == "training":
                break
    stopped = client.post("/api/training/stop")
    assert stopped.status_code == 200, stopped.text
    status = stopped.json()
    assert status["state"] == "stopped" and not status["running"] and status["step"] >= 1
    assert status["final"] is None
    run = client.studio.training.current
    assert run.returncode == -15  # SIGTERM
    assert not (run.run_dir / "final").exists()
    assert client.get("/api/training").json()["runs"] == []
    assert client.post("/api/training/stop").status_code == 409
    assert client.post("/api/compare", json={"prompt": "Hi", "run": run.name}).status_code == 404


def test_refusals(client, steers_path, runner, tmp_path):
    assert client.post("/api/training", json={"method": "nope"}).status_code == 400
    assert client.post("/api/training", json={"method": "sft", "steps": 0}).status_code == 400
    assert client.post("/api/training", json={"method": "sft", "lr": -1}).status_code == 400
    assert client.post("/api/model", json={"run": "../etc"}).status_code == 404
    steers_path.write_text(steers_path.read_text().splitlines()[0] + "\n")
    few = client.post("/api/training", json={"method": "sft"})
    assert few.status_code == 409 and f"at least {MIN_STEERS}" in few.json()["error"]
    assert not runs_dir(steers_path).exists()

    off = Studio(runner, SteerStore(tmp_path / "other.jsonl"))
    with TestClient(
        create_app(off, token=TOKEN), base_url="http://127.0.0.1", headers={"X-Studio-Token": TOKEN}
    ) as plain:
        assert plain.get("/api/training").status_code == 404
        assert plain.get("/api/info").json()["training"] is False


def _lora_adapter(model, directory: Path, seed: int) -> Path:
    """A LoRA adapter of `model` with random (non-zero) weights drawn from `seed`, saved to `directory`."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(str(directory))
    return directory


def test_a_tuned_models_label_names_its_adapter(runner, tmp_path):
    """`model_label` of the merged model: the start model's and a tuned one's differ, and so do two adapters'."""
    first = load_tuned(runner, "run-a", _lora_adapter(runner.model, tmp_path / "a", seed=1))
    second = load_tuned(runner, "run-b", _lora_adapter(runner.model, tmp_path / "b", seed=2))
    assert first.name == "tiny+run-a" and first.round == 2
    assert first.label == model_label("tiny+run-a", first.model)
    fingerprints = {label.split("@")[1] for label in (runner.label, first.label, second.label)}
    assert len(fingerprints) == 3
    assert runner.label == model_label("tiny", runner.model)  # the start model's weights are not touched
    shutil.rmtree(tmp_path / "b")
    with pytest.raises(StudioError, match="cannot load the adapter"):
        load_tuned(runner, "run-b", tmp_path / "b")


def test_the_servers_shutdown_stops_its_training_process(runner, steers_path, tmp_path):
    training = Training(steers_path, "tiny", "cpu", extra_overrides=(f"cache_dir={tmp_path / 'cache'}",))
    studio = Studio(runner, SteerStore(steers_path), training=training)
    with TestClient(
        create_app(studio, token=TOKEN), base_url="http://127.0.0.1", headers={"X-Studio-Token": TOKEN}
    ) as client:
        assert client.post("/api/training", json={"method": "sft", "steps": 10_000}).status_code == 200
    run = training.current
    assert run.ended.is_set() and run.returncode == -15 and run.stop_requested
