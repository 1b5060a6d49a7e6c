import copy
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from localdpo.forward import sequence_token_logps
from localdpo.losses import localized_dpo_loss, masked_sum
from localdpo.models.loading import tiny_model
from localdpo.reference.cache import ReferenceCache, ReferenceModelChangedError
from localdpo.reference.fingerprint import model_fingerprint
from localdpo.reference.store import verify_store
from localdpo.steers.batches import trim_to_scored
from localdpo.steers.steer import Steer, save_steers
from localdpo.steers.tokenization import SpanMode, tokenize_steer

BATCH = 2


def make_steers(n: int = 4) -> list[Steer]:
    """Steers whose span modes select different tokens (edits inside, run-on rejected tails, complete ends)."""
    steers = []
    for i in range(n):
        a, b = 17 + i, 25 + 3 * i
        kind = i % 4
        if kind == 0:
            steers.append(
                Steer(
                    prompt=[{"role": "user", "content": f"What is {a} + {b}? Explain."}],
                    prefix=f"{a} + {b} = ",
                    rejected=f"{a + b + 1}, because the digits add up that way.",
                    chosen=f"{a + b}, because the digits add up that way.",
                    id=f"add-{i}",
                )
            )
        elif kind == 1:
            steers.append(
                Steer(
                    prompt=[{"role": "user", "content": f"Name {i + 2} colors."}],
                    prefix="1. Red\n2. ",
                    rejected="Blue, which is a fine color and also the sky.\n3. Green",
                    chosen="Yellow",
                    id=f"colors-{i}",
                )
            )
        elif kind == 2:
            steers.append(
                Steer(
                    prompt=f"Translate 'cat' into French (case {i}).",
                    prefix="In French, 'cat' is ",
                    rejected="'chien'. That is the usual word.",
                    chosen="'chat'.",
                    chosen_complete=True,
                    id=f"fr-{i}",
                )
            )
        else:
            steers.append(
                Steer(
                    prompt=[{"role": "user", "content": f"Is {a} prime?"}],
                    prefix="",
                    rejected=f"Yes, {a} is prime since nothing divides it.",
                    chosen=f"Let me check the divisors of {a} first.",
                    id=f"prime-{i}",
                )
            )
    return steers


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    model, tokenizer = tiny_model(tokenizer=smol_tokenizer)
    return model, tokenizer


@pytest.fixture(scope="module")
def examples(tiny):
    _, tokenizer = tiny
    return [tokenize_steer(steer, tokenizer) for steer in make_steers(4)]


def direct_logps(model, ids: torch.Tensor) -> torch.Tensor:
    """Reference log-probs (T,) of one sequence, computed alone."""
    with torch.no_grad():
        return sequence_token_logps(model, ids[None], torch.ones_like(ids[None]))[0]


def new_cache(model, tokenizer, cache_dir, **kwargs) -> ReferenceCache:
    kwargs.setdefault("batch_size", BATCH)
    return ReferenceCache(model, tokenizer, cache_dir=cache_dir, progress=False, **kwargs)


def assert_matches_direct(model, examples, values, atol=1e-5):
    for example, (chosen, rejected) in zip(examples, values):
        assert chosen.dtype == torch.float32 and chosen.shape == example.chosen_ids.shape
        assert rejected.shape == example.rejected_ids.shape
        assert chosen[0] == 0 and rejected[0] == 0
        torch.testing.assert_close(chosen, direct_logps(model, example.chosen_ids), atol=atol, rtol=0)
        torch.testing.assert_close(rejected, direct_logps(model, example.rejected_ids), atol=atol, rtol=0)


def test_miss_then_hit_values_equal_direct_computation(tiny, examples, tmp_path):
    model, tokenizer = tiny
    cache = new_cache(model, tokenizer, tmp_path)
    first = cache.get(examples)
    assert (cache.stats.misses, cache.stats.hits, cache.stats.forward_passes) == (4, 0, 2)  # 4 examples / 2
    assert_matches_direct(model, examples, first)
    again = cache.get(examples)
    assert (cache.stats.hits, cache.stats.forward_passes, cache.stats.computed_examples) == (4, 2, 4)
    reopened = new_cache(model, tokenizer, tmp_path)
    from_disk = reopened.get(examples[::-1])
    assert (reopened.stats.hits, reopened.stats.forward_passes) == (4, 0)
    for (c1, r1), (c2, r2), (c3, r3) in zip(first, again, from_disk[::-1]):
        assert torch.equal(c1, c2) and torch.equal(c1, c3) and torch.equal(r1, r2) and torch.equal(r1, r3)


def test_duplicates_in_one_call_are_computed_once(tiny, examples, tmp_path):
    model, tokenizer = tiny
    cache = new_cache(model, tokenizer, tmp_path)
    values = cache.get([examples[0], examples[0], examples[1]])
    assert cache.stats.computed_examples == 2 and cache.stats.forward_passes == 1
    assert torch.equal(values[0][0], values[1][0])


def _with_weight_nudged(model, tokenizer):
    changed = copy.deepcopy(model)
    with torch.no_grad():
        value = changed.model.layers[0].mlp.up_proj.weight[3, 5]
        changed.model.layers[0].mlp.up_proj.weight[3, 5] = torch.nextafter(value, value + 1)
    return changed, tokenizer, {}


def _with_new_vocab(model, tokenizer):
    changed = copy.deepcopy(tokenizer)
    changed.add_tokens(["<steer>"])
    return model, changed, {}


def _with_new_template(model, tokenizer):
    changed = copy.deepcopy(tokenizer)
    changed.chat_template = changed.chat_template + "\n"
    return model, changed, {}


INGREDIENTS = {
    "weights": _with_weight_nudged,
    "tokenizer_vocab": _with_new_vocab,
    "chat_template": _with_new_template,
    "dtype": lambda m, t: (m, t, {"dtype": torch.bfloat16}),
    "max_length": lambda m, t: (m, t, {"max_length": 512}),
}


@pytest.mark.parametrize("ingredient", list(INGREDIENTS))
def test_each_key_ingredient_changed_gives_a_miss(tiny, examples, tmp_path, ingredient):
    model, tokenizer = tiny
    base = new_cache(model, tokenizer, tmp_path)
    base.precompute(examples)
    changed_model, changed_tokenizer, kwargs = INGREDIENTS[ingredient](model, tokenizer)
    cache = new_cache(changed_model, changed_tokenizer, tmp_path, **kwargs)
    assert cache.context_hash != base.context_hash
    assert cache.key(examples[0].chosen_ids) != base.key(examples[0].chosen_ids)
    values = cache.get(examples)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.computed_examples) == (0, 4, 4)
    if ingredient != "dtype":
        assert_matches_direct(changed_model, examples, values)


def test_changed_token_ids_give_a_miss_for_that_example_only(tiny, examples, tmp_path):
    from dataclasses import replace

    model, tokenizer = tiny
    cache = new_cache(model, tokenizer, tmp_path)
    new_cache(model, tokenizer, tmp_path).precompute(examples)
    ids = examples[2].rejected_ids.clone()
    ids[-1] = (ids[-1] + 1) % 1000
    edited = replace(examples[2], rejected_ids=ids)
    values = cache.get([examples[0], edited, examples[3]])
    assert (cache.stats.hits, cache.stats.misses, cache.stats.computed_examples) == (2, 1, 1)
    assert_matches_direct(model, [edited], values[1:2])


def test_bf16_autocast_values_are_close_to_float32(tiny, examples, tmp_path):
    model, tokenizer = tiny
    full = new_cache(model, tokenizer, tmp_path).get(examples[:1])[0][0]
    half = new_cache(model, tokenizer, tmp_path, dtype=torch.bfloat16).get(examples[:1])[0][0]
    assert not torch.equal(full, half)
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)


def test_span_modes_select_positions_of_the_same_cached_sequences(tiny, tmp_path):
    model, tokenizer = tiny
    steers = make_steers(4)
    by_mode = {mode: [tokenize_steer(s, tokenizer, span_mode=mode) for s in steers] for mode in SpanMode}
    cache = new_cache(model, tokenizer, tmp_path)
    cache.precompute(by_mode[SpanMode.DIVERGENT])
    built = cache.stats.forward_passes
    masks_differ = False
    for examples in by_mode.values():
        values = cache.get(examples)
        for example, (chosen, rejected) in zip(examples, values):
            direct_c = direct_logps(model, example.chosen_ids)
            direct_r = direct_logps(model, example.rejected_ids)
            # Each mode's span sum over the cached sequence equals the span sum of a direct computation.
            torch.testing.assert_close(
                masked_sum(chosen[None], example.chosen_mask[None]),
                masked_sum(direct_c[None], example.chosen_mask[None]),
                atol=1e-4,
                rtol=0,
            )
            torch.testing.assert_close(
                masked_sum(rejected[None], example.rejected_mask[None]),
                masked_sum(direct_r[None], example.rejected_mask[None]),
                atol=1e-4,
                rtol=0,
            )
        masks_differ |= any(
            not torch.equal(a.rejected_mask, b.rejected_mask)
            for a, b in zip(examples, by_mode[SpanMode.DIVERGENT])
        )
    assert masks_differ  # the modes really select different positions
    assert cache.stats.forward_passes == built  # and no mode recomputed anything


def test_trimmed_sides_are_served_as_prefixes_of_the_cached_side(tiny, examples, tmp_path):
    model, tokenizer = tiny
    cache = new_cache(model, tokenizer, tmp_path)
    cache.precompute(examples)
    trimmed = [trim_to_scored(e) for e in examples]
    shorter = sum(t.rejected_ids.numel() < e.rejected_ids.numel() for t, e in zip(trimmed, examples))
    assert shorter >= 1
    reopened = new_cache(model, tokenizer, tmp_path)
    values = reopened.get(trimmed)
    assert reopened.stats.forward_passes == 0 and reopened.stats.prefix_hits >= shorter
    assert_matches_direct(model, trimmed, values)


def test_prefix_of_another_steer_is_not_served(tiny, examples, tmp_path):
    from dataclasses import replace

    model, tokenizer = tiny
    new_cache(model, tokenizer, tmp_path).precompute(examples[:1])
    cache = new_cache(model, tokenizer, tmp_path)
    short = trim_to_scored(examples[0])
    assert short.rejected_ids.numel() < examples[0].rejected_ids.numel()
    other = replace(short, steer_id="someone-else")
    cache.get([other])
    assert (cache.stats.prefix_hits, cache.stats.misses) == (0, 1)


def test_ablation_of_3_betas_and_2_span_modes_computes_reference_once(tiny, tmp_path):
    model, tokenizer = tiny
    steers = make_steers(6)
    cache = new_cache(model, tokenizer, tmp_path)
    for mode in (SpanMode.DIVERGENT, SpanMode.COMPLETION):
        examples = [tokenize_steer(s, tokenizer, span_mode=mode) for s in steers]
        policy = [(direct_logps(model, e.chosen_ids), direct_logps(model, e.rejected_ids)) for e in examples]
        for beta in (0.05, 0.1, 0.5):
            for start in range(0, len(examples), BATCH):
                batch = examples[start : start + BATCH]
                reference = cache.get(batch)
                for j, (example, (ref_chosen, ref_rejected)) in enumerate(zip(batch, reference)):
                    policy_chosen, policy_rejected = policy[start + j]  # policy == reference here
                    out = localized_dpo_loss(
                        policy_chosen[None],
                        policy_rejected[None],
                        ref_chosen[None],
                        ref_rejected[None],
                        example.chosen_mask[None],
                        example.rejected_mask[None],
                        beta=beta,
                    )
                    # h = 0 when the policy is the reference: -log σ(0) = log 2.
                    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-4)
    assert cache.stats.computed_examples == 6
    assert cache.stats.forward_passes == 3  # ceil(6 / 2), over all 6 runs
    assert cache.stats.hits == 6 * 6 - 6


def test_lora_reference_is_the_base_model_even_with_a_trained_adapter(tiny, examples, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    base = copy.deepcopy(model)
    policy = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    policy.train()
    ids = examples[0].chosen_ids[None]
    for _ in range(3):
        loss = -sequence_token_logps(policy, ids, torch.ones_like(ids)).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert max(float(p.detach().abs().max()) for p in lora_b) > 0
    with torch.no_grad():
        adapted = sequence_token_logps(policy.eval(), ids, torch.ones_like(ids))[0]
    assert (adapted - direct_logps(base, ids[0])).abs().max() > 1e-3  # the adapter really changes outputs
    policy.train()
    cache = new_cache(policy, tokenizer, tmp_path)
    assert cache.model_fingerprint == model_fingerprint(base)
    assert_matches_direct(base, examples, cache.get(examples))
    assert policy.training  # mode restored
    # Adapter steps after construction are not weight changes of the reference: misses still compute.
    loss = -sequence_token_logps(policy, ids, torch.ones_like(ids)).sum()
    loss.backward()
    optimizer.step()
    more = [tokenize_steer(s, tokenizer) for s in make_steers(6)[4:]]
    assert_matches_direct(base, more, cache.get(more))


def test_changed_weights_after_construction_raise_on_a_miss(tiny, examples, tmp_path):
    model, tokenizer = tiny
    policy = copy.deepcopy(model)
    cache = new_cache(policy, tokenizer, tmp_path)
    cache.precompute(examples[:2])
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    ids = examples[0].chosen_ids[None]
    sequence_token_logps(policy, ids, torch.ones_like(ids)).sum().backward()
    optimizer.step()
    assert_matches_direct(
        model, examples[:2], cache.get(examples[:2])
    )  # hits: the original reference's values
    with pytest.raises(ReferenceModelChangedError, match="changed"):
        cache.get(examples)
    cache.refresh_fingerprint()
    assert_matches_direct(policy, examples, cache.get(examples))


def test_unchanged_weights_with_a_new_stamp_do_not_raise(tiny, examples, tmp_path):
    model, tokenizer = tiny
    copy_ = copy.deepcopy(model)
    cache = new_cache(copy_, tokenizer, tmp_path)
    copy_.load_state_dict(model.state_dict())  # same values, bumped version counters
    cache.get(examples[:1])
    assert cache.stats.computed_examples == 1


def test_bad_input_errors(tiny, examples, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="bfloat16"):
        new_cache(copy.deepcopy(model).to(torch.bfloat16), tokenizer, tmp_path)
    cache = new_cache(model, tokenizer, tmp_path, max_length=8)
    with pytest.raises(ValueError, match="max_length=8"):
        cache.get(examples[:1])


def test_other_writers_shards_are_seen_without_reopening(tiny, examples, tmp_path):
    model, tokenizer = tiny
    first, second = new_cache(model, tokenizer, tmp_path), new_cache(model, tokenizer, tmp_path)
    first.precompute(examples[:2])
    second.precompute(examples[2:])
    first.get(examples)
    assert (first.stats.hits, first.stats.computed_examples) == (4, 2)


def test_a_flipped_byte_is_detected_reported_and_recomputed(tiny, examples, tmp_path):
    model, tokenizer = tiny
    cache = new_cache(model, tokenizer, tmp_path, shard_size=2)
    cache.precompute(examples)
    shards = sorted(cache.store.shard_dir.glob("[!.]*.safetensors"))
    assert len(shards) == 2
    data = bytearray(shards[0].read_bytes())
    data[len(data) - 17] ^= 0x10  # inside the float payload
    shards[0].write_bytes(bytes(data))
    reopened = new_cache(model, tokenizer, tmp_path)
    with pytest.warns(UserWarning, match=shards[0].name):
        values = reopened.get(examples)
    assert (reopened.stats.damaged_shards, reopened.stats.computed_examples) == (1, 2)
    assert_matches_direct(model, examples, values)
    intact, damaged = verify_store(tmp_path)
    assert damaged == [] and sum(c.entries for c in intact) == 8


WORKER = textwrap.dedent(
    """
    import sys, time, torch
    from localdpo.models.loading import tiny_model
    from localdpo.reference.cache import ReferenceCache
    from localdpo.steers.steer import load_steers
    from localdpo.steers.tokenization import tokenize_steer

    steers_file, cache_dir, start, stop, hang_after, marker = sys.argv[1:7]
    model, tokenizer = tiny_model()
    calls = [0]

    def hang(module, args, kwargs):
        calls[0] += 1
        if calls[0] == int(hang_after):
            open(marker, "w").close()
            time.sleep(600)

    if int(hang_after) > 0:
        model.register_forward_pre_hook(hang, with_kwargs=True)
    examples = [tokenize_steer(s, tokenizer) for s in load_steers(steers_file)[int(start) : int(stop)]]
    open(marker + ".ready", "w").close()
    ReferenceCache(model, tokenizer, cache_dir=cache_dir, batch_size=1, shard_size=1, progress=False).precompute(examples)
    """
)


def _spawn(tmp_path, steers_file, start, stop, hang_after, name):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    marker = tmp_path / name
    args = [sys.executable, str(script), str(steers_file), str(tmp_path / "cache"), str(start), str(stop)]
    return subprocess.Popen(args + [str(hang_after), str(marker)], env=dict(os.environ)), marker


def _wait_for(path, process, seconds=180):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"worker exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_build_killed_with_sigkill_resumes_and_verifies(tiny, tmp_path):
    model, tokenizer = tiny
    steers = make_steers(8)
    steers_file = save_steers(steers, tmp_path / "steers.jsonl")
    worker, marker = _spawn(tmp_path, steers_file, 0, 8, 4, "hung")
    try:
        _wait_for(marker, worker)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    assert worker.returncode == -signal.SIGKILL
    examples = [tokenize_steer(s, tokenizer) for s in steers]
    cache = new_cache(model, tokenizer, tmp_path / "cache", batch_size=1)
    assert len(list(cache.store.index_dir.glob("[!.]*.json"))) == 3  # the 3 shards finished before the kill
    cache.precompute(examples)
    assert (cache.stats.hits, cache.stats.computed_examples, cache.stats.forward_passes) == (3, 5, 5)
    intact, damaged = verify_store(tmp_path / "cache")
    assert damaged == [] and sum(c.entries for c in intact) == 16
    assert_matches_direct(model, examples, cache.get(examples))


@pytest.mark.slow
def test_two_processes_write_concurrently_and_a_reader_sees_both(tiny, tmp_path):
    model, tokenizer = tiny
    steers = make_steers(8)
    steers_file = save_steers(steers, tmp_path / "steers.jsonl")
    workers = [_spawn(tmp_path, steers_file, 0, 5, 0, "a")[0], _spawn(tmp_path, steers_file, 3, 8, 0, "b")[0]]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    cache = new_cache(model, tokenizer, tmp_path / "cache")
    examples = [tokenize_steer(s, tokenizer) for s in steers]
    assert_matches_direct(model, examples, cache.get(examples))
    assert (cache.stats.hits, cache.stats.forward_passes) == (8, 0)
    intact, damaged = verify_store(tmp_path / "cache")
    assert damaged == [] and len(intact) >= 8


def test_adapters_added_through_transformers_are_disabled_for_the_reference(tiny, examples, tmp_path):
    from peft import LoraConfig

    model, tokenizer = tiny
    adapted = copy.deepcopy(model)
    adapted.add_adapter(LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = examples[0].chosen_ids
    assert (direct_logps(adapted, ids) - direct_logps(model, ids)).abs().max() > 1e-3
    cache = new_cache(adapted, tokenizer, tmp_path)
    assert cache.model_fingerprint == model_fingerprint(model)
    assert_matches_direct(model, examples, cache.get(examples))
    assert (direct_logps(adapted, ids) - direct_logps(model, ids)).abs().max() > 1e-3  # re-enabled after


def test_per_module_train_flags_are_restored(tiny, examples, tmp_path):
    model, tokenizer = tiny
    policy = copy.deepcopy(model).train()
    policy.model.layers[0].eval()
    new_cache(policy, tokenizer, tmp_path).get(examples[:1])
    assert policy.training and policy.model.layers[1].training and not policy.model.layers[0].training


def test_lora_injected_into_the_cached_model_after_construction_is_switched_off(tiny, examples, tmp_path):
    """The trainer builds the cache on `base`, then `get_peft_model(base)` injects LoRA layers into it in place."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    base = copy.deepcopy(model)
    cache = new_cache(base, tokenizer, tmp_path)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["norm"], init_lora_weights=False
    )
    policy = get_peft_model(base, config)
    with torch.no_grad():
        policy.get_base_model().model.norm.modules_to_save["default"].weight.mul_(3.0)
    ids = examples[0].chosen_ids
    assert (direct_logps(policy, ids) - direct_logps(model, ids)).abs().max() > 1e-3
    assert_matches_direct(model, examples, cache.get(examples))
    assert (direct_logps(policy, ids) - direct_logps(model, ids)).abs().max() > 1e-3  # adapters back on
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
