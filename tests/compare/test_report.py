import csv

from localdpo.compare.report import markdown_tables, summarize, write_csv, write_markdown

from .conftest import records


def test_summary_pairs_against_baseline_and_writes_files(tmp_path):
    rows = summarize(records(), baseline="sft", n_boot=500)
    by = {(r.method, r.metric): r for r in rows}
    assert by[("ldpo", "task_accuracy")].value.mean == 1.0
    assert by[("ldpo", "task_accuracy")].difference.low > 0
    assert by[("sft", "task_accuracy")].difference is None
    assert by[("base", "task_accuracy")].n_seeds == 1
    # one-seed base is paired with sft by item: sft minus... base minus sft is negative
    assert by[("base", "task_accuracy")].difference.mean < 0

    table = markdown_tables(rows, baseline="sft")
    lines = table.splitlines()
    assert lines[0] == "| method | seeds | task accuracy (%) | drift KL |"
    assert lines[3].startswith("| sft | 3 | ")
    assert "| ldpo | 3 | 100.0 [100.0, 100.0] | " in table
    ldpo_difference = [line for line in lines if line.startswith("| ldpo |")][-1]
    # more accurate than sft (better), but more drift (worse): each column judged in its own direction
    assert ldpo_difference.split("|")[2].strip().endswith("better")
    assert ldpo_difference.split("|")[3].strip().endswith("worse")

    write_csv(rows, tmp_path / "results.csv", baseline="sft")
    with open(tmp_path / "results.csv") as handle:
        table_rows = list(csv.DictReader(handle))
    assert len(table_rows) == 6 and table_rows[0]["method"] == "base"
    write_markdown(rows, tmp_path / "results.md", baseline="sft", title="t", notes=["3 seeds"])
    assert (tmp_path / "results.md").read_text().startswith("# t\n")
