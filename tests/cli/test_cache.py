import pytest

from localdpo.cli import main
from localdpo.models.loading import tiny_model
from localdpo.steers.steer import Steer, save_steers


@pytest.fixture(scope="module")
def model_dir(smol_tokenizer, tmp_path_factory):
    """A tiny random model saved as a local model directory (what `--model` loads)."""
    directory = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = tiny_model(tokenizer=smol_tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def steers_file(tmp_path):
    steers = [
        Steer(
            prompt=[{"role": "user", "content": f"What is {a} + {a}?"}],
            prefix=f"{a} + {a} = ",
            rejected=f"{2 * a + 1}, I think.",
            chosen=f"{2 * a}",
            id=f"add-{a}",
        )
        for a in (3, 14, 27)
    ]
    return save_steers(steers, tmp_path / "steers.jsonl")


def test_build_info_verify_clear(model_dir, steers_file, tmp_path, capsys):
    cache_dir = str(tmp_path / "cache")
    build = [
        "cache",
        "build",
        "--steers",
        str(steers_file),
        "--model",
        str(model_dir),
        "--cache-dir",
        cache_dir,
    ]
    assert main(build + ["--batch-size", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 tokenized" in out and "computed: 3 examples in 2 forward passes" in out

    assert main(build + ["--span-mode", "completion", "--no-progress"]) == 0
    assert "cached already: 3   computed: 0 examples" in capsys.readouterr().out

    assert main(["cache", "info", "--cache-dir", cache_dir]) == 0
    assert "1 shards, 6 sequences" in capsys.readouterr().out

    assert main(["cache", "verify", "--cache-dir", cache_dir]) == 0
    assert "1 shards intact (6 sequences), 0 damaged" in capsys.readouterr().out

    shard = next((tmp_path / "cache").glob("*/shards/[!.]*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["cache", "verify", "--cache-dir", cache_dir]) == 1
    out = capsys.readouterr().out
    assert f"damaged: {shard}" in out and "sha256" in out
    assert main(["cache", "verify", "--cache-dir", cache_dir, "--remove-damaged"]) == 0
    assert not shard.exists()

    assert main(["cache", "clear", "--cache-dir", cache_dir]) == 0
    assert "removed 1 cached contexts" in capsys.readouterr().out
    assert main(["cache", "info", "--cache-dir", cache_dir]) == 0
    assert "empty" in capsys.readouterr().out


def test_build_accepts_the_tiny_model_name(steers_file, tmp_path, capsys):
    """`tiny` names the same model in `cache build` as in train and compare configs."""
    argv = ["cache", "build", "--steers", str(steers_file), "--model", "tiny", "--no-progress"]
    assert main(argv + ["--cache-dir", str(tmp_path / "cache")]) == 0
    assert "3 tokenized" in capsys.readouterr().out


def test_bad_input_is_one_line(one_line_error, steers_file, tmp_path):
    bad_row = tmp_path / "row.jsonl"
    bad_row.write_text('{"prompt": "p", "prefix": "", "chosen": 3, "rejected": "b"}\n')
    bad_bytes = tmp_path / "bytes.jsonl"
    bad_bytes.write_bytes(b'{"prompt": "p\xff", "prefix": "", "chosen": "a", "rejected": "b"}\n')
    argv = ["--model", "tiny", "--cache-dir", tmp_path / "cache", "--no-progress"]
    assert one_line_error("cache", "build", "--steers", bad_row, *argv) == (
        f"localdpo cache: {bad_row}:1: field 'chosen': expected a string, got int"
    )
    assert one_line_error("cache", "build", "--steers", bad_bytes, *argv) == (
        f"localdpo cache: {bad_bytes}:1: invalid UTF-8: byte 0xff at byte offset 13 of the file "
        "(column 14 of the line); save the file as UTF-8"
    )
    assert one_line_error("cache", "build", "--steers", tmp_path / "nope.jsonl", *argv) == (
        f"localdpo cache: steer file not found: {tmp_path / 'nope.jsonl'}"
    )
    line = one_line_error("cache", "build", "--steers", steers_file, "--model", "someone/typo")
    assert line.startswith(
        "localdpo cache: model 'someone/typo' is neither a local directory nor a cached hub model"
    )
