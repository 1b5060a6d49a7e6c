import pytest

from localdpo.steers.steer import SteerFileError
from localdpo.studio.server import address, bind, is_loopback, load_studio


def test_bind_a_free_loopback_port_and_print_its_address():
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0 and address(sock, "tok") == f"http://127.0.0.1:{port}/?token=tok"
    finally:
        sock.close()
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_bound_to_all_addresses_it_prints_a_loopback_address():
    """A browser cannot open http://0.0.0.0:...: the printed address is the loopback one."""
    sock = bind("0.0.0.0", 0)
    try:
        port = sock.getsockname()[1]
        assert address(sock, "tok") == f"http://127.0.0.1:{port}/?token=tok"
    finally:
        sock.close()


def test_load_studio_reads_the_steer_file_before_the_model(tmp_path, monkeypatch):
    """A bad steer file fails before any model is loaded (fast, and nothing is written)."""
    path = tmp_path / "steers.jsonl"
    path.write_text('{"prompt": "p", "prefix": "", "rejected": "x", "chosen": "y"}\nnot json\n')
    loaded = []
    monkeypatch.setattr("localdpo.models.loading.load_model", lambda *a, **k: loaded.append(a))
    with pytest.raises(SteerFileError, match="steers.jsonl:2"):
        load_studio("tiny", path)
    assert loaded == [] and path.read_text().endswith("not json\n")


def test_load_studio_over_the_tiny_model_trains_next_to_its_steer_file(tmp_path):
    studio = load_studio("tiny", tmp_path / "new.jsonl", token_limit=64)
    assert studio.runner is studio.start_runner and studio.runner.name == "tiny"
    assert studio.token_limit == 64 and studio.training is not None
    assert not (tmp_path / "new.jsonl").exists() or (tmp_path / "new.jsonl").read_text() == ""
