import pytest

from localdpo.cli import main
from localdpo.studio.server import address, bind, is_loopback


def test_a_bad_steer_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "steers.jsonl"
    path.write_text('{"prompt": "p", "prefix": "", "rejected": "x", "chosen": "x"}\n')
    assert main(["studio", "--model", "tiny", "--steers", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("localdpo studio: ")
    assert "steers.jsonl:1: field 'chosen': is identical to rejected" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--port", "70000"], "not a port number"), (["--token-limit", "0"], "--token-limit must be >= 1")],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    assert main(["studio", "--model", "tiny", *argv]) == 2
    assert message in capsys.readouterr().err


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


def test_a_task_that_does_not_load_is_one_line_before_the_model(capsys):
    assert main(["studio", "--model", "tiny", "--task", "nowhere_at_all:Task"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("localdpo studio: task 'nowhere_at_all:Task': no module 'nowhere_at_all'")
    assert err.count("\n") == 1
