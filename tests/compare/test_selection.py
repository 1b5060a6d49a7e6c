from localdpo.compare.selection import GridPoint, choose, edge_note, edge_values, score_keys, selection_table

LRS = ["optim.lr=1.0e-07", "optim.lr=1.0e-06", "optim.lr=3.0e-05"]


def _grid(label: str, accuracies: list[float], betas: list[str] | None = None) -> list[GridPoint]:
    """`label` at every lr (and beta, inner loop, as `SelectConfig.points` orders them), scored in order."""
    points = [[lr] for lr in LRS] if betas is None else [[lr, b] for lr in LRS for b in betas]
    return [GridPoint(label, p, {"eval/task_accuracy": a}) for p, a in zip(points, accuracies)]


def test_a_value_on_the_first_or_last_of_its_grid_is_an_edge():
    points = [p.point for p in _grid("ldpo", [0.0] * 6, ["loss.beta=0.1", "loss.beta=0.5"])]
    assert edge_values(points, ["optim.lr=1.0e-06", "loss.beta=0.5"]) == ["loss.beta=0.5"]
    assert edge_values(points, ["optim.lr=1.0e-07", "loss.beta=0.1"]) == ["optim.lr=1.0e-07", "loss.beta=0.1"]
    assert edge_values(points, ["optim.lr=3.0e-05", "loss.beta=0.1"])[0] == "optim.lr=3.0e-05"
    # a key with one value has no edge; neither has a point written as is
    assert edge_values([["optim.lr=1.0e-06"]], ["optim.lr=1.0e-06"]) == []
    assert edge_values([[]], []) == []


def test_an_edge_chosen_variant_is_marked_in_the_table_and_the_note():
    sft = _grid("sft", [0.1, 0.3, 0.2])  # chooses the middle lr
    ldpo = _grid("ldpo", [0.4, 0.2, 0.1])  # chooses the lowest: the grid's edge
    chosen = {"sft": choose(sft), "ldpo": choose(ldpo)}
    assert chosen["ldpo"].point == ["optim.lr=1.0e-07"]
    lines = selection_table(sft + ldpo, chosen).splitlines()
    assert lines[3].startswith("| sft | optim.lr=1.0e-06 |") and lines[3].endswith("| **yes** |")
    assert lines[5].startswith("| ldpo | optim.lr=1.0e-07 |")
    assert lines[5].endswith("| **yes**, on the grid's edge (optim.lr=1.0e-07) |")
    assert lines[-1].startswith("On the grid's edge:")
    grids = {label: [p.point for p in points] for label, points in (("sft", sft), ("ldpo", ldpo))}
    assert edge_note(chosen, grids) == (
        "Chosen on the edge of the grid (the best value may lie beyond it, so that variant may not have trained "
        "at its best): `ldpo` (optim.lr=1.0e-07)."
    )
    assert (
        edge_note({"sft": chosen["sft"]}, grids) == "No variant's chosen value lies on the edge of its grid."
    )
    assert "edge" not in selection_table(sft, {"sft": chosen["sft"]})


def test_without_a_task_uptake_decides_first_then_the_tie_breaks():
    """Primary `uptake` (no task): the point with more uptake wins though its preference accuracy is lower; on
    equal uptake, preference accuracy decides; the table's columns follow the order that decides."""
    a = GridPoint("sft", [LRS[0]], {"eval/uptake": 0.2, "eval/preference_accuracy": 0.9}, primary="uptake")
    b = GridPoint("sft", [LRS[1]], {"eval/uptake": 0.3, "eval/preference_accuracy": 0.1}, primary="uptake")
    c = GridPoint("sft", [LRS[2]], {"eval/uptake": 0.3, "eval/preference_accuracy": 0.4}, primary="uptake")
    assert choose([a, b]) is b and choose([a, b, c]) is c
    assert [key for key, _ in score_keys("uptake")] == [
        "eval/uptake",
        "eval/preference_accuracy",
        "eval/chosen_nll",
        "eval/drift_kl",
    ]
    header = selection_table([a, b, c], {"sft": c}).splitlines()[0]
    assert header == (
        "| variant | grid point | val. uptake (%) | val. pref. acc. (%) | val. chosen-span NLL | drift KL | chosen |"
    )
