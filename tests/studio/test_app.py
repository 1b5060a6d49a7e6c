"""The studio's HTTP API with the tiny model: generation, cut, save, resume, review, edit, delete, refusals."""

import json

import pytest
from starlette.testclient import TestClient

from localdpo.models.loading import tiny_model
from localdpo.steers.steer import Steer, load_steers, save_steers
from localdpo.steers.tokenization import tokenize_steer
from localdpo.studio import session as session_module
from localdpo.studio.app import MAX_BODY_BYTES, create_app
from localdpo.studio.session import AnswerSession, ModelRunner, Studio
from localdpo.studio.store import SteerStore

TOKEN = "test-token"


@pytest.fixture(scope="module")
def runner(smol_tokenizer):
    model, tokenizer = tiny_model(tokenizer=smol_tokenizer)
    return ModelRunner(model, tokenizer, "tiny")


@pytest.fixture
def studio(runner, tmp_path):
    return Studio(runner, SteerStore(tmp_path / "steers.jsonl"), token_limit=64)


@pytest.fixture
def client(studio):
    with TestClient(
        create_app(studio, token=TOKEN), base_url="http://127.0.0.1", headers={"X-Studio-Token": TOKEN}
    ) as c:
        yield c


def stream(client, session: str, segment: int, first: int = 0) -> list[dict]:
    with client.stream("GET", f"/api/sessions/{session}/segments/{segment}/stream?from={first}") as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line]


def pieces_of(events: list[dict]) -> list[str]:
    tokens = [e for e in events if e["type"] == "token"]
    assert [e["index"] for e in tokens] == list(range(len(tokens)))
    assert events[-1]["type"] == "end" and events[-1]["tokens"] == len(tokens)
    return [e["text"] for e in tokens]


def test_every_request_needs_the_token(client):
    assert client.get("/api/info").status_code == 200
    for headers, url in (
        ({"X-Studio-Token": ""}, "/api/info"),
        ({"X-Studio-Token": "wrong"}, "/api/info"),
        ({"X-Studio-Token": ""}, "/"),
        ({"X-Studio-Token": ""}, "/static/app.js"),
        ({"X-Studio-Token": ""}, f"/static/app.js?token={TOKEN}"),  # a token in a URL opens the page only
    ):
        response = client.get(url, headers=headers)
        assert response.status_code == 403
        assert "missing or wrong token" in response.json()["error"]
    assert client.get("/static/..%2F__init__.py").status_code == 404  # only the page's own files


def test_the_url_token_is_exchanged_for_a_strict_http_only_cookie(studio):
    """Opening `/?token=` sets the token cookie (named after the port); the page's own requests then carry
    no token of their own, and the page never holds the token in its HTML."""
    with TestClient(create_app(studio, token=TOKEN), base_url="http://127.0.0.1:8123") as browser:
        page = browser.get(f"/?token={TOKEN}")
        assert page.status_code == 200 and TOKEN not in page.text
        cookie = page.headers["set-cookie"]
        assert cookie.startswith(f"localdpo_studio_8123={TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert browser.get("/api/info").status_code == 200  # the cookie alone
        assert browser.get("/static/app.js").status_code == 200
        browser.cookies.clear()
        assert browser.get("/api/info").status_code == 403


def test_a_foreign_origin_is_refused_even_with_the_token(client):
    hostile = client.post("/api/sessions", json={"prompt": "Hi"}, headers={"Origin": "http://evil.example"})
    assert hostile.status_code == 403 and "another origin" in hostile.json()["error"]
    assert client.get("/api/info", headers={"Origin": "null"}).status_code == 403
    assert client.get("/api/info", headers={"Origin": "http://127.0.0.1"}).status_code == 200


def test_every_answer_forbids_framing_inline_code_and_referrers(client):
    for response in (
        client.get("/"),
        client.get("/api/info"),
        client.get("/api/info", headers={"X-Studio-Token": "wrong"}),
    ):
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"


def test_the_favicon_needs_no_token(client):
    icon = client.get("/favicon.ico", headers={"X-Studio-Token": ""})
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


def test_a_foreign_host_is_refused(client):
    """A loopback server answers only to loopback host names (no DNS rebinding)."""
    assert client.get("/api/info", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200


def test_generate_cut_save_resume_and_steer_again(client, runner, tmp_path):
    opened = client.post(
        "/api/sessions", json={"prompt": "Name three colours.", "system": "Be brief.", "max_new_tokens": 12}
    )
    assert opened.status_code == 200, opened.text
    session = opened.json()["session"]
    pieces = pieces_of(stream(client, session, 0))
    assert len(pieces) == 12  # the tiny model never ends its turn this early

    saved = client.post(
        f"/api/sessions/{session}/steers", json={"segment": 0, "cut": 4, "chosen": "red, green"}
    )
    assert saved.status_code == 200, saved.text
    first = saved.json()
    assert first["next_segment"] == 1
    assert first["kept"] + first["steer"]["rejected"] == "".join(pieces)
    assert first["steer"]["prefix"] == first["kept"]

    resumed = pieces_of(stream(client, session, 1))
    second = client.post(
        f"/api/sessions/{session}/steers",
        json={"segment": 1, "cut": 2, "chosen": " and blue.", "chosen_complete": True},
    ).json()
    assert second["next_segment"] is None
    assert second["steer"]["prefix"] == first["kept"] + "red, green" + second["kept"]
    assert second["kept"] + second["steer"]["rejected"] == "".join(resumed)

    steers = load_steers(tmp_path / "steers.jsonl")
    assert [s.id for s in steers] == [first["steer"]["id"], second["steer"]["id"]]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name three colours."},
    ]
    assert steers[0].prompt == steers[1].prompt == messages
    assert (steers[1].chosen, steers[1].chosen_complete) == (" and blue.", True)
    meta = steers[0].meta
    assert (meta["model"], meta["temperature"], meta["max_new_tokens"], meta["cut_token"]) == (
        "tiny",
        0.0,
        12,
        4,
    )
    assert meta["time"].endswith("+00:00")
    # The answer resumed from exactly the tokens the trainer sees for the first steer's chosen side.
    tokenized = tokenize_steer(steers[0], runner.tokenizer)
    assert tokenized.chosen_ids.tolist() == runner.input_ids(messages, first["kept"] + "red, green")

    again = client.post(f"/api/sessions/{session}/steers", json={"segment": 0, "cut": 1, "chosen": "x"})
    assert again.status_code == 409 and "already steered" in again.json()["error"]


def test_sampling_is_seeded(client):
    def answer(seed: int) -> list[str]:
        body = {"prompt": "Hi", "max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": seed}
        return pieces_of(stream(client, client.post("/api/sessions", json=body).json()["session"], 0))

    assert answer(1) == answer(1) != answer(2)


@pytest.fixture
def stop_at(monkeypatch):
    """`stop_at(n)`: a person presses Stop as the (n-1)-th token of a segment appears; `generate` checks the
    stop before it hands out the next token, so the segment ends with n tokens (one stop per call)."""
    stops: list[int] = []
    original = AnswerSession._check_task

    def check(self, segment):
        original(self, segment)
        if stops and len(segment.ids) == stops[0] - 1:
            stops.pop(0)
            self.stop(segment)

    monkeypatch.setattr(AnswerSession, "_check_task", check)
    return stops.append


def test_stop_stops_generation_and_the_rejected_side_is_what_was_written(client, stop_at, tmp_path):
    stop_at(6)
    session = client.post("/api/sessions", json={"prompt": "Hi", "max_new_tokens": 64}).json()["session"]
    events = stream(client, session, 0)
    pieces = pieces_of(events)
    assert len(pieces) == 6 and events[-1]["stopped"] is True and events[-1]["cancelled"] is False
    saved = client.post(f"/api/sessions/{session}/steers", json={"segment": 0, "cut": 2, "chosen": "Hello"})
    assert saved.status_code == 200, saved.text
    steer = saved.json()["steer"]
    assert saved.json()["kept"] + steer["rejected"] == "".join(pieces)  # nothing past the stop
    assert (steer["rejected_complete"], steer["meta"]["rejected_end"]) == (False, "stopped")
    assert saved.json()["steers"] == 1


def test_finish_lets_the_model_write_the_rejected_side_to_its_end(client, stop_at):
    """Stopped after 5 tokens then finished, greedy: the same 40 tokens as an answer never stopped."""
    body = {"prompt": "Name three colours.", "max_new_tokens": 40}
    whole = pieces_of(stream(client, client.post("/api/sessions", json=body).json()["session"], 0))
    stop_at(5)
    session = client.post("/api/sessions", json=body).json()["session"]
    assert len(pieces_of(stream(client, session, 0))) == 5
    finishing = client.post(f"/api/sessions/{session}/segments/0/finish")
    assert finishing.json() == {"finishing": 0, "from": 5}
    events = stream(client, session, 0)
    assert pieces_of(events) == whole and events[-1]["stopped"] is False
    rest = stream(client, session, 0, first=5)
    assert [e["index"] for e in rest if e["type"] == "token"] == list(range(5, 40))
    again = client.post(f"/api/sessions/{session}/segments/0/finish")
    assert again.status_code == 409 and "nothing to finish" in again.json()["error"]


def test_a_save_while_the_model_writes_is_refused_not_queued(client, runner, tmp_path):
    """The old studio held such a save until the rejected side was generated and then wrote it, whatever the
    person did meanwhile; now nothing is saved and the answer says why."""
    with runner.lock:  # the model is busy: the segment cannot end meanwhile
        session = client.post("/api/sessions", json={"prompt": "Hi", "max_new_tokens": 8}).json()["session"]
        refused = client.post(f"/api/sessions/{session}/steers", json={"segment": 0, "cut": 0, "chosen": "x"})
        assert refused.status_code == 409 and "still being generated" in refused.json()["error"]
    assert len(pieces_of(stream(client, session, 0))) == 8
    assert not (tmp_path / "steers.jsonl").exists()


def test_cancel_interrupts_a_long_prefill_between_chunks(client, runner, monkeypatch):
    """A prompt of ~200 tokens read 16 at a time: Cancel after the first chunk stops the prefill there."""
    monkeypatch.setattr(session_module, "PREFILL_CHUNK_TOKENS", 16)
    chunks: list[int] = []
    opened: dict = {}

    def cancel_after_the_first_chunk(module, args, kwargs):
        chunks.append(kwargs["input_ids"].shape[1])
        if len(chunks) == 1:
            assert client.post(f"/api/sessions/{opened['session']}/cancel").status_code == 200

    handle = runner.model.register_forward_pre_hook(cancel_after_the_first_chunk, with_kwargs=True)
    try:
        with runner.lock:  # generation waits until the session's id is known here
            body = {"prompt": "word " * 200, "max_new_tokens": 8}
            opened.update(client.post("/api/sessions", json=body).json())
        events = stream(client, opened["session"], 0)
    finally:
        handle.remove()
    assert chunks == [16]
    assert events[-1]["cancelled"] is True and events[-1]["tokens"] == 0


def test_cancel_stops_generation_and_what_was_written_can_be_steered(client, stop_at):
    session = client.post("/api/sessions", json={"prompt": "Hi", "max_new_tokens": 64}).json()["session"]
    assert client.post(f"/api/sessions/{session}/cancel").status_code == 200
    events = stream(client, session, 0)
    assert events[-1]["tokens"] <= 64
    saved = client.post(f"/api/sessions/{session}/steers", json={"segment": 0, "cut": 0, "chosen": "Hello"})
    assert saved.status_code == 200, saved.text


def test_a_degenerate_steer_needs_a_second_confirmed_request(client, tmp_path):
    """A correction that is the start of the rejected text: 409 with `confirm`, nothing written; sent again
    with `confirm: true`, it is saved."""
    session = client.post("/api/sessions", json={"prompt": "Hi", "max_new_tokens": 12}).json()["session"]
    pieces = pieces_of(stream(client, session, 0))
    body = {"segment": 0, "cut": 0, "chosen": "".join(pieces[:6])}
    warned = client.post(f"/api/sessions/{session}/steers", json=body)
    assert warned.status_code == 409 and warned.json()["confirm"] is True
    assert "the start of what the model wrote" in warned.json()["error"]
    assert not (tmp_path / "steers.jsonl").exists()
    saved = client.post(f"/api/sessions/{session}/steers", json={**body, "confirm": True})
    assert saved.status_code == 200 and len(load_steers(tmp_path / "steers.jsonl")) == 1


def test_task_prompts_are_drawn_and_judged(client):
    drawn = client.post("/api/task-prompt", json={"task": "addition", "seed": 3}).json()
    assert drawn["prompt_id"] == "addition/797+953" and drawn["prompt"].startswith("What is 797 + 953?")
    body = {"prompt": drawn["prompt"], "max_new_tokens": 4, "task": {"name": "addition", "seed": 3}}
    assert client.post("/api/sessions", json=body).json()["task"] == {
        "name": "addition",
        "prompt_id": drawn["prompt_id"],
    }
    edited = client.post("/api/sessions", json={**body, "prompt": "What is 1 + 1?"}).json()
    assert edited["task"] is None  # an edited prompt is no longer the task's


def test_review_marks_the_tokens_the_trainer_scores(client, studio, runner):
    steer = Steer(
        prompt="Give four examples",
        prefix="1. High-quality example 1\n2. ",
        rejected="Low-quality example 2\n3. Low-quality example 3",
        chosen="High-quality example 2",
        id="ex",
    )
    studio.store.append(steer)
    for mode in ("divergent", "to_end", "completion"):
        listed = client.get(f"/api/steers?span_mode={mode}").json()
        (row,) = listed["steers"]
        tokenized = tokenize_steer(steer, runner.tokenizer, span_mode=mode)
        for side in ("chosen", "rejected"):
            scored = "".join(text for text, is_scored in row[side]["tokens"] if is_scored)
            ids = getattr(tokenized, f"{side}_ids")[getattr(tokenized, f"{side}_mask")]
            assert scored == runner.tokenizer.decode(ids)
            assert row[side]["scored"] == int(getattr(tokenized, f"{side}_mask").sum())
            assert row[side]["length"] == len(getattr(tokenized, f"{side}_ids"))
    divergent = client.get("/api/steers").json()["steers"][0]
    assert [t for t, s in divergent["chosen"]["tokens"] if s] == [" High"]
    assert [t for t, s in divergent["rejected"]["tokens"] if s] == [" Low"]
    assert client.get("/api/steers?span_mode=everything").status_code == 400


def test_edit_and_delete(client, tmp_path):
    path = save_steers(
        [Steer(prompt="p", prefix="a = ", rejected="3", chosen="2", id=f"s{i}") for i in range(2)],
        tmp_path / "steers.jsonl",
    )
    rows = client.get("/api/steers").json()["steers"]
    edited = client.put(
        "/api/steers/s0", json={"version": rows[0]["version"], "chosen": "4", "chosen_complete": True}
    )
    assert edited.status_code == 200, edited.text
    stale = client.put("/api/steers/s0", json={"version": rows[0]["version"], "chosen": "5"})
    assert stale.status_code == 409
    unusable = client.put("/api/steers/s1", json={"version": rows[1]["version"], "chosen": "3"})
    assert unusable.status_code == 400 and "identical to rejected" in unusable.json()["error"]
    assert client.delete(f"/api/steers/s1?version={rows[1]['version']}").status_code == 200
    assert client.delete("/api/steers/s1?version=x").status_code == 404
    assert client.delete("/api/steers/s0").status_code == 400
    (steer,) = load_steers(path)
    assert (steer.id, steer.chosen, steer.chosen_complete, "edited" in steer.meta) == ("s0", "4", True, True)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("not json", 400, "not JSON"),
        ([1, 2], 400, "must be a JSON object"),
        ({}, 400, "field 'prompt' is missing"),
        ({"prompt": "  "}, 400, "field 'prompt' is empty"),
        ({"prompt": 5}, 400, "field 'prompt': expected str, got int"),
        ({"prompt": "hi", "temperature": "hot"}, 400, "field 'temperature': expected float"),
        ({"prompt": "hi", "temperature": 9}, 400, "field 'temperature': 9.0 is outside"),
        ({"prompt": "hi", "max_new_tokens": 65}, 400, "field 'max_new_tokens': 65 is outside [1, 64]"),
        ({"prompt": "hi", "max_new_tokens": True}, 400, "expected int, got bool"),
        ({"prompt": "hi", "task": {"name": "chess"}}, 400, "unknown task 'chess'"),
        ({"prompt": "x" * 40_000}, 400, "at most 32000"),
        ({"prompt": "x" * (MAX_BODY_BYTES + 1)}, 413, "request body over"),
    ],
)
def test_bad_requests_get_clear_errors(client, body, status, message):
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post("/api/sessions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_unknown_sessions_segments_and_cuts(client):
    assert client.get("/api/sessions/nope/segments/0/stream").status_code == 404
    session = client.post("/api/sessions", json={"prompt": "Hi", "max_new_tokens": 4}).json()["session"]
    assert client.get(f"/api/sessions/{session}/segments/1/stream").status_code == 404
    assert len(pieces_of(stream(client, session, 0))) == 4
    out_of_range = client.post(
        f"/api/sessions/{session}/steers", json={"segment": 0, "cut": 5, "chosen": "x"}
    )
    assert (
        out_of_range.status_code == 400 and "field 'cut': 5 is outside 0..4" in out_of_range.json()["error"]
    )
    missing = client.post(f"/api/sessions/{session}/steers", json={"segment": 0, "cut": 1})
    assert missing.status_code == 400 and "field 'chosen' is missing" in missing.json()["error"]
    assert client.post("/api/task-prompt", json={"task": "chess"}).status_code == 400
    assert client.get("/api/nothing").status_code == 404


@pytest.mark.embedded
def test_the_checker_marks_the_embedded_models_mistake(tmp_path):
    """SmolLM2-135M-Instruct answers 797 + 953 = 1768 (greedy): the stream suggests the cut and the fix."""
    from localdpo.models.loading import load_model

    model, tokenizer = load_model()
    studio = Studio(
        ModelRunner(model, tokenizer, "smollm2-135m-instruct"), SteerStore(tmp_path / "steers.jsonl")
    )
    headers = {"X-Studio-Token": TOKEN}
    with TestClient(create_app(studio, token=TOKEN), base_url="http://127.0.0.1", headers=headers) as client:
        drawn = client.post("/api/task-prompt", json={"task": "addition", "seed": 3}).json()
        body = {"prompt": drawn["prompt"], "max_new_tokens": 32, "task": {"name": "addition", "seed": 3}}
        session = client.post("/api/sessions", json=body).json()["session"]
        events = stream(client, session, 0)
        pieces = pieces_of(events)
        (suggest,) = [e for e in events if e["type"] == "suggest"]
        assert (suggest["found"], suggest["expected"], suggest["chosen"]) == ("1768", "1750", "1750")
        saved = client.post(
            f"/api/sessions/{session}/steers",
            json={"segment": 0, "cut": suggest["cut"], "chosen": suggest["chosen"]},
        ).json()
    steer = saved["steer"]
    assert steer["prefix"].endswith("797 + 953 = ") and steer["rejected"].startswith("1768")
    assert steer["prefix"] + steer["rejected"] == "".join(pieces)
    assert steer["meta"]["task"] == "addition" and steer["meta"]["prompt_id"] == "addition/797+953"


def test_a_task_of_ones_own_is_offered_and_drawn_once_loaded(client, monkeypatch):
    """`localdpo studio --task examples/tasks/spell.py:Spell` loads the task before serving: the page lists it
    beside the built-in ones and draws its training-split prompts, as for a built-in task."""
    from pathlib import Path

    from localdpo.tasks import get_task, registry, split_of

    monkeypatch.setattr(registry, "_LOADED", {})
    monkeypatch.setattr(registry, "_BY_NAME", {})
    assert client.post("/api/task-prompt", json={"task": "spell"}).status_code == 400
    get_task(f"{Path(__file__).resolve().parents[2] / 'examples' / 'tasks' / 'spell.py'}:Spell")
    names = [t["name"] for t in client.get("/api/info").json()["tasks"]]
    assert names == ["addition", "running_sum", "multiples", "sort_words", "spell"]
    drawn = client.post("/api/task-prompt", json={"task": "spell", "seed": 3}).json()
    assert drawn["prompt_id"].startswith("spell/") and split_of(drawn["prompt_id"]) == "train"
    assert drawn["prompt"].startswith("Spell the word '")


def test_an_edit_into_a_degenerate_steer_needs_confirming(client, tmp_path):
    """The checks a new steer meets hold for an edit too: a correction edited into the start of the rejected
    text is refused with `confirm` (the file unchanged) and saved when the same edit comes with confirm."""
    path = save_steers(
        [Steer(prompt="p", prefix="a = ", rejected="3 and more", chosen="2", id="s0")], tmp_path / "steers.jsonl"
    )
    before = path.read_bytes()
    (row,) = client.get("/api/steers").json()["steers"]
    warned = client.put("/api/steers/s0", json={"version": row["version"], "chosen": "3 and"})
    assert warned.status_code == 409 and warned.json()["confirm"] is True
    assert "the start of what the model wrote" in warned.json()["error"]
    assert path.read_bytes() == before
    saved = client.put("/api/steers/s0", json={"version": row["version"], "chosen": "3 and", "confirm": True})
    assert saved.status_code == 200, saved.text
    assert load_steers(path)[0].chosen == "3 and"
