from starlette.testclient import TestClient

from localdpo.models.loading import tiny_model
from localdpo.studio.app import create_app
from localdpo.studio.errors import StudioError
from localdpo.studio.session import ModelRunner, Studio
from localdpo.studio.store import SteerStore


def test_a_refusal_carries_its_status_message_and_whether_to_confirm():
    plain, warning = StudioError(409, "busy"), StudioError(400, "degenerate", confirm=True)
    assert (plain.status, str(plain), plain.confirm) == (409, "busy", False)
    assert (warning.status, str(warning), warning.confirm) == (400, "degenerate", True)


def test_the_app_answers_a_refusal_with_its_status_and_a_one_line_error(smol_tokenizer, tmp_path):
    model, tokenizer = tiny_model(tokenizer=smol_tokenizer)
    studio = Studio(ModelRunner(model, tokenizer, "tiny"), SteerStore(tmp_path / "steers.jsonl"))
    app = create_app(studio, token="tok")
    with TestClient(app, base_url="http://127.0.0.1", headers={"X-Studio-Token": "tok"}) as client:
        answer = client.post("/api/sessions/nope/cancel")
        training = client.post("/api/training", json={})  # training is off in this studio: a refusal too
    assert answer.status_code == 404 and list(answer.json()) == ["error"] and "\n" not in answer.json()["error"]
    assert 400 <= training.status_code < 500 and "error" in training.json()
