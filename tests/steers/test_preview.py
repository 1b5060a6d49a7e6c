import json

from localdpo.steers.preview import preview_steers, render_html, render_text, side_runs
from localdpo.steers.tokenization import tokenize_steer

EXAMPLE = {
    "prompt": "Give four examples",
    "prefix": "1. High-quality example 1\n2. ",
    "rejected": "Low-quality example 2\n3. Low-quality example 3",
    "chosen": "High-quality example 2",
    "id": "examples",
}
LONG = {
    "prompt": "Write a long story about the sea. " * 8,
    "prefix": "Once ",
    "rejected": "upon a time.",
    "chosen": "there was a boat.",
    "id": "long",
}


def write(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_preview_marks_the_tokens_tokenize_steer_scores(tmp_path, smol_tokenizer):
    path = write(
        tmp_path / "s.jsonl", [EXAMPLE, "{oops", dict(EXAMPLE, id="same", chosen=EXAMPLE["rejected"]), LONG]
    )
    preview = preview_steers(path, smol_tokenizer, max_length=40)
    assert [item.steer.id for item in preview.steers] == ["examples", "long"]
    assert [line for line, _ in preview.load_report.skipped] == [2, 3]
    assert [item.steer.id for item in preview.refused] == ["long"]
    assert "max_length=40" in preview.refused[0].refused

    tokenized = preview.steers[0].tokenized
    assert tokenized.chosen_mask.equal(tokenize_steer(preview.steers[0].steer, smol_tokenizer).chosen_mask)
    for side, scored in (("chosen", " High"), ("rejected", " Low")):
        segments = side_runs(tokenized, side, smol_tokenizer)
        assert [s.text for s in segments if s.scored] == [scored]
        ids = getattr(tokenized, f"{side}_ids")
        start = getattr(tokenized, f"{side}_assistant_start")
        assert "".join(s.text for s in segments) == smol_tokenizer.decode(ids[start:].tolist())


def test_text_and_html_rendering(tmp_path, smol_tokenizer):
    path = write(tmp_path / "s.jsonl", [EXAMPLE, "{oops"])
    preview = preview_steers(path, smol_tokenizer, span_mode="divergent")
    plain = render_text(preview, smol_tokenizer, color=False)
    assert "2.[+ High+]-quality example 2" in plain
    assert "2.[- Low-]-quality example 2" in plain
    assert "(20 tokens, 1 scored)" in plain and "(29 tokens, 1 scored)" in plain
    assert "1 steers will train; 1 rows skipped as invalid, 0 steers refused" in plain
    assert "skipped: " + str(path) + ":2: invalid JSON" in plain
    assert "\033[" not in plain
    colored = render_text(preview, smol_tokenizer, color=True)
    assert "\033[30;42m High\033[0m" in colored and "[+" not in colored
    page = render_html(preview, smol_tokenizer)
    assert '<mark class="chosen"> High</mark>' in page and '<mark class="rejected"> Low</mark>' in page
    assert page.startswith("<!doctype html>")


def test_completion_mode_marks_the_whole_answer(tmp_path, smol_tokenizer):
    preview = preview_steers(write(tmp_path / "s.jsonl", [EXAMPLE]), smol_tokenizer, span_mode="completion")
    segments = side_runs(preview.steers[0].tokenized, "chosen", smol_tokenizer)
    assert [s.scored for s in segments] == [True]
    assert segments[0].text == "1. High-quality example 1\n2. High-quality example 2"
