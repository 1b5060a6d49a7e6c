"""Ablations: small comparisons over shared steers, each in its own folder, the first variant the baseline."""

from localdpo.compare import ablation
from localdpo.compare.config import load_compare_config, preset_path
from localdpo.steers.steer import load_steers


def test_variants_prefix_the_method():
    assert ablation.variants("ldpo", {"b0.1": ["loss.beta=0.1"], "plain": []}) == {
        "b0.1": ["method=ldpo", "loss.beta=0.1"],
        "plain": ["method=ldpo"],
    }


def test_shared_steers_are_the_configs_own_files_when_it_names_both():
    config = load_compare_config(preset_path("tiny"))
    train, heldout = ablation.shared_steers(config, preset_path("tiny").parent)
    assert train.name == "tiny_steers_train.jsonl" and heldout.name == "tiny_steers_heldout.jsonl"


def _recording(monkeypatch):
    """`run_comparison` replaced by one that records the config it was given and returns no runs."""
    seen = []

    def fake(config):
        seen.append(config)
        return ablation.ComparisonResult(config.output_dir, [], None, None, [], 0.0)

    monkeypatch.setattr(ablation, "run_comparison", fake)
    return seen


def test_run_is_a_comparison_of_its_own_on_the_shared_steers(monkeypatch, tmp_path):
    seen = _recording(monkeypatch)
    base = load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}"])
    labelled = {"b0.5": ["method=ldpo", "loss.beta=0.5"], "b0.1": ["method=ldpo", "loss.beta=0.1"]}
    result = ablation.run(base, "beta", labelled, tmp_path / "train.jsonl", tmp_path / "heldout.jsonl")
    (config,) = seen
    assert config.variants == labelled and config.baseline == "b0.5"  # the first variant
    assert config.output_dir == tmp_path / "beta" and config.name == "tiny-beta"
    assert config.steers.train_file == str(tmp_path / "train.jsonl")
    assert config.steers.heldout_file == str(tmp_path / "heldout.jsonl")
    assert base.variants != labelled and base.name == "tiny"  # the base config is left as it was
    assert result.name == "beta"


def test_steer_count_sweep_trains_on_nested_subsets(monkeypatch, tmp_path):
    """Fractions 0.25, 0.5, 1 of the 8 tiny train steers: 2, 4 and 8 steers, each subset inside the next."""
    seen = _recording(monkeypatch)
    base = load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}"])
    train, heldout = ablation.shared_steers(base, tmp_path)
    total = len(load_steers(train))
    results = list(ablation.steer_count_sweep(base, train, heldout, fractions=(0.25, 0.5, 1.0)))
    counts = [max(1, round(total * f)) for f in (0.25, 0.5, 1.0)]
    assert [r.name for r in results] == [f"steers_{n}" for n in counts]
    subsets = [{s.id for s in load_steers(config.steers.train_file)} for config in seen]
    assert [len(s) for s in subsets] == counts
    assert subsets[0] <= subsets[1] <= subsets[2]
    assert list(seen[0].variants) == [f"sft ({counts[0]} steers)", f"ldpo ({counts[0]} steers)"]
