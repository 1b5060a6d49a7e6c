"""Steers made from a model's own mistakes on checkable tasks.

The workflow mirrored: a person watches the model answer, stops it shortly after the first wrong item,
rewrites that item and lets it resume. So a steer's `prefix` is the output up to the mistake, `rejected` is
the wrong item plus the few tokens the model wrote before it was stopped, and `chosen` is the corrected
item only (a partial correction: the rest of the answer is left to the model).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch

from localdpo.forward import kv_cache_kwargs
from localdpo.steers import Steer
from localdpo.tasks import Mistake, MistakeKind, Task, TaskPrompt, Verdict, get_task
from localdpo.tokenization import tokenize_steer

STOP_AFTER_TOKENS = 3
"""Tokens of the original output kept in `rejected` after the wrong item: where a watcher would stop it."""


@dataclass(frozen=True)
class Generation:
    """One generated answer."""

    text: str
    """Decoded assistant text, without special tokens."""
    complete: bool
    """The model ended its turn (EOS) within `max_new_tokens`."""
    num_tokens: int
    """Generated tokens, EOS included."""


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings for `generate_answers`."""

    max_new_tokens: int = 96
    """Generated tokens per answer at most."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling threshold (ignored when greedy)."""
    batch_size: int = 32
    """Prompts decoded together (left-padded)."""
    share_prefix: bool = True
    """Run the tokens all prompts of a batch start with (chat template, task wording) once, not per row."""


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix shared by all rows, leaving every row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    p = 0
    while p < limit and all(r[p] == rows[0][p] for r in rows):
        p += 1
    return p


def render_chat(tokenizer, user_text: str) -> str:
    """The user turn rendered with the tokenizer's chat template, ready for the assistant's answer."""
    messages = [{"role": "user", "content": user_text}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return user_text


class _StopRows:
    """A row stops `delay` tokens after `should_stop(index, text)` first returns True for its new tokens.

    Used as a `generate` stopping criterion (sampling) and, by its `check`, as `_greedy_decode`'s `stop`. Rows
    stopped this way are recorded in `stopped_at` (new tokens kept), because `generate` pads them with the pad
    token, which is EOS for SmolLM2 and would otherwise read as a finished answer.
    """

    def __init__(self, tokenizer, rows: list[int], width: int, should_stop, delay: int):
        self.tokenizer, self.rows, self.width = tokenizer, rows, width
        self.should_stop, self.delay = should_stop, delay
        self.triggered: dict[int, int] = {}
        self.stopped_at: dict[int, int] = {}

    def check(self, row: int, new_tokens: list[int]) -> bool:
        """Whether `row` stops now, with `new_tokens` generated so far."""
        if row in self.stopped_at:
            return True
        steps = len(new_tokens)
        text = None if row in self.triggered else self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        if text is not None and self.should_stop(self.rows[row], text):
            self.triggered[row] = steps
        if row in self.triggered and steps - self.triggered[row] >= self.delay:
            self.stopped_at[row] = steps
            return True
        return False

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new_tokens = input_ids[:, self.width :].tolist()  # one device-to-host copy per step
        done = [self.check(row, tokens) for row, tokens in enumerate(new_tokens)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # (B,)


def _takes_logits_to_keep(model) -> bool:
    """Whether the model (or, under a peft wrapper, which passes it on, its base model) computes logits for
    the last positions only when asked."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _greedy_decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache,
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    stop: Callable[[int, list[int]], bool] | None,
) -> list[tuple[list[int], bool]]:
    """Greedy continuations of left-padded rows, `(new token ids, ended with EOS)` per row.

    The tokens `model.generate` picks greedily, computed only for rows still running: a row that ends (EOS,
    `stop(row, new tokens so far)` returning True, or `max_new_tokens`) leaves the batch, its KV-cache rows
    with it, so each decoding step costs what its running rows cost. A row ended by `stop` keeps every token
    (the last one included) and reads as not ended with EOS. Positions come from the attention mask as in
    `generate`. `cache` holds the first `cache.get_seq_length()` columns of every row already (or is empty).
    """
    from localdpo.forward import returned_cache

    device = input_ids.device
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # (B, T)
    done_columns = cache.get_seq_length()
    step_ids = input_ids[:, done_columns:]  # (B, T - cached)
    step_positions = positions[:, done_columns:]
    running = list(range(input_ids.shape[0]))  # batch row of each running row
    new_tokens: list[list[int]] = [[] for _ in running]
    results: list[tuple[list[int], bool] | None] = [None] * len(running)
    last_only = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    for _ in range(max_new_tokens):
        output = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=step_positions,
            use_cache=True,
            **kv_cache_kwargs(cache),
            **last_only,
        )
        cache = returned_cache(output)
        next_ids = output.logits[:, -1, :].float().argmax(-1)  # (B_running,)
        keep = []
        for slot, (row, token) in enumerate(zip(running, next_ids.tolist())):
            new_tokens[row].append(token)
            if stop is not None and stop(row, new_tokens[row]):
                results[row] = (new_tokens[row], False)
            elif token in eos_ids:
                results[row] = (new_tokens[row][:-1], True)
            else:
                keep.append(slot)
        if not keep:
            break
        if len(keep) < len(running):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            attention_mask, next_ids = attention_mask[index], next_ids[index]
            step_positions = step_positions[index]
            running = [running[slot] for slot in keep]
        step_ids = next_ids[:, None]  # (B_running, 1)
        step_positions = step_positions[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(running), 1))], dim=1)
    for row, result in enumerate(results):
        if result is None:  # max_new_tokens reached
            results[row] = (new_tokens[row], False)
    return results  # type: ignore[return-value]


def _generate_with_transformers(
    model, input_ids, attention_mask, cache, config: GenerationConfig, eos_ids: set[int], pad_id: int, stopper
) -> list[tuple[list[int], bool]]:
    """Continuations by `model.generate` (sampled with temperature and top-p, or greedy at temperature 0, every
    row computed to the end of the batch), `(new token ids, ended with EOS)` per row. `generate_answers` uses
    it to sample; `experiments/bench_generation.py` measures `_greedy_decode` against it."""
    from transformers import StoppingCriteriaList

    sampling = config.temperature > 0
    width = input_ids.shape[1]
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids),
        stopping_criteria=StoppingCriteriaList([stopper]) if stopper else None,
        do_sample=sampling,
        temperature=config.temperature if sampling else None,
        top_p=config.top_p if sampling else None,
        top_k=None,
        max_new_tokens=config.max_new_tokens,
        use_cache=True,
        **(kv_cache_kwargs(cache) if cache.get_seq_length() else {}),
    )  # (B, width + new)
    rows = []
    for row, new in enumerate(output[:, width:].tolist()):
        if stopper is not None and row in stopper.stopped_at:
            rows.append((new[: stopper.stopped_at[row]], False))
        else:
            cut = next((j for j, token in enumerate(new) if token in eos_ids), None)
            rows.append((new, False) if cut is None else (new[:cut], True))
    return rows


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the model's generation config's and the tokenizer's end-of-turn."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids]) | {tokenizer.eos_token_id}
    ids.discard(None)
    return ids


def pad_token_id(tokenizer) -> int:
    """The id left padding is written with (never attended): the pad token, else EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _left_padded_batches(
    model, rows: Sequence[Sequence[int]], *, batch_size: int, pad_id: int, share_prefix: bool
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, object]]:
    """Yield `(row indices, input_ids (B, T), attention_mask (B, T), KV cache)` on the model's device: the
    rows in batches of `batch_size`, sorted by length so padding stays small.

    Rows are [shared prefix][left padding][own tokens]: positions come from the attention mask's cumulative
    sum, so the padding in the middle changes no position and no attended token. With `share_prefix`, the
    tokens every row of a batch starts with (chat template, task wording) run once, into the returned cache.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        shared = _common_prefix([list(rows[i]) for i in batch]) if share_prefix and len(batch) > 1 else 0
        width = max(len(rows[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for row, i in enumerate(batch):
            own = list(rows[i][shared:])
            input_ids[row, :shared] = torch.tensor(list(rows[i][:shared]), dtype=torch.long)
            input_ids[row, width - len(own) :] = torch.tensor(own, dtype=torch.long)
            attention_mask[row, :shared] = 1
            attention_mask[row, width - len(own) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        cache = DynamicCache()
        if shared:
            model(input_ids=input_ids[:1, :shared], use_cache=True, **kv_cache_kwargs(cache))
            cache.batch_repeat_interleave(len(batch))
        yield batch, input_ids, attention_mask, cache


@torch.no_grad()
def greedy_token_continuations(
    model,
    rows: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    batch_size: int = 32,
    share_prefix: bool = True,
    should_stop: Callable[[int, list[int]], bool] | None = None,
) -> list[tuple[list[int], bool]]:
    """Greedy continuations of token-id rows, `(new token ids, ended with EOS)` per row, in input order.

    The one greedy decoder (`_greedy_decode`: KV cache, finished rows leave the batch) over rows of any
    origin; `generate_answers` runs the same batching on rendered prompts. An EOS token ends its row and is
    not returned (`eos_ids=set()`: no token ends a row). `should_stop(i, new tokens of row i so far)`, when
    given, ends row i as soon as it returns True, keeping every token (the last one included), not ended with
    EOS. The caller puts the model in eval mode.
    """
    results: list[tuple[list[int], bool] | None] = [None] * len(rows)
    batches = _left_padded_batches(
        model, rows, batch_size=batch_size, pad_id=pad_id, share_prefix=share_prefix
    )
    for batch, input_ids, attention_mask, cache in batches:

        def stop(row: int, new: list[int], batch=batch) -> bool:
            return should_stop(batch[row], new)

        decoded = _greedy_decode(
            model,
            input_ids,
            attention_mask,
            cache,
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
            stop=stop if should_stop is not None else None,
        )
        for i, result in zip(batch, decoded):
            results[i] = result
    return results  # type: ignore[return-value]


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    user_texts: Sequence[str],
    config: GenerationConfig = GenerationConfig(),
    *,
    seed: int = 0,
    should_stop=None,
    stop_delay: int = 0,
    progress: bool = True,
    desc: str = "generating",
) -> list[Generation]:
    """Answers to `user_texts` (chat template, left padding, KV cache), in input order.

    Prompts are batched by rendered length so padding stays small. `should_stop(i, partial_text)`, when
    given, ends answer i `stop_delay` tokens after it first returns True (that answer has
    `complete=False`). Greedy decoding computes only the rows still running (`_greedy_decode`); sampling
    runs `model.generate` and draws from `torch.manual_seed(seed + batch index)`; the global RNG state is
    restored afterwards.
    """
    from tqdm.auto import tqdm

    rendered = [render_chat(tokenizer, text) for text in user_texts]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer)
    sampling = config.temperature > 0
    results: list[Generation | None] = [None] * len(encoded)
    rng_state = torch.random.get_rng_state()
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress, unit="answer")
    try:
        batches = _left_padded_batches(
            model, encoded, batch_size=config.batch_size, pad_id=pad_id, share_prefix=config.share_prefix
        )
        for batch_index, (batch, input_ids, attention_mask, cache) in enumerate(batches):
            width = input_ids.shape[1]
            stopper = _StopRows(tokenizer, batch, width, should_stop, stop_delay) if should_stop else None
            if sampling:
                torch.manual_seed(seed + batch_index)
                rows = _generate_with_transformers(
                    model,
                    input_ids,
                    attention_mask,
                    cache,
                    config,
                    eos_ids,
                    pad_id,
                    stopper,
                )
            else:
                rows = _greedy_decode(
                    model,
                    input_ids,
                    attention_mask,
                    cache,
                    max_new_tokens=config.max_new_tokens,
                    eos_ids=eos_ids,
                    stop=stopper.check if stopper is not None else None,
                )
            for i, (ids, complete) in zip(batch, rows):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                results[i] = Generation(text, complete, len(ids) + complete)
            bar.update(len(batch))
    finally:
        bar.close()
        torch.random.set_rng_state(rng_state)
        model.train(was_training)
    return results  # type: ignore[return-value]


def stop_at_first_mistake(task: Task, prompts: Sequence[TaskPrompt]):
    """`should_stop` for `generate_answers`: True once the partial answer to prompts[i] has a judged mistake."""

    def should_stop(index: int, text: str) -> bool:
        return task.check(prompts[index], text, complete=False).verdict is Verdict.WRONG

    return should_stop


def _first_tokens(tokenizer, text: str, k: int) -> str:
    """The first `k` tokens of `text` decoded back (a prefix of `text` for byte-level BPE)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:k]
    head = tokenizer.decode(ids)
    return head if text.startswith(head) else ""


def steer_from_mistake(
    task: Task,
    prompt: TaskPrompt,
    generation: Generation,
    mistake: Mistake,
    tokenizer,
    *,
    stop_after_tokens: int = STOP_AFTER_TOKENS,
    meta: dict | None = None,
) -> Steer:
    """The steer a watcher makes at `mistake`: prefix up to it, the wrong item (+ a few tokens) against the fix."""
    output = generation.text
    correction = task.correct(prompt, output, mistake)
    after = output[mistake.end :]
    tail = _first_tokens(tokenizer, after, stop_after_tokens)
    rejected = output[mistake.start : mistake.end] + tail
    # The answer really ended right after the wrong part: its end-of-turn token is part of what is rejected.
    rejected_complete = generation.complete and tail == after
    if mistake.kind is MistakeKind.MISSING and not rejected and not generation.complete:
        raise ValueError("cut-off output: no missing item to correct")
    return Steer(
        prompt=[{"role": "user", "content": prompt.text}],
        prefix=output[: mistake.start],
        rejected=rejected,
        chosen=correction.text,
        chosen_complete=correction.ends_answer,
        rejected_complete=rejected_complete,
        replaces=mistake.end - mistake.start,
        id=f"{prompt.id}#{(meta or {}).get('seed', 0)}",
        meta={
            "task": task.name,
            "prompt_id": prompt.id,
            "mistake": {**asdict(mistake), "kind": mistake.kind.value},
            "output": output,
            "output_complete": generation.complete,
            **(meta or {}),
        },
    )


@dataclass
class SteerSummary:
    """Counts of one `make_steers` run."""

    task: str
    tried: int = 0
    """Prompts answered."""
    correct: int = 0
    """Answers already right (nothing to steer)."""
    uncheckable: int = 0
    """Answers with no checkable answer (format not kept or cut off)."""
    steers: int = 0
    """Steers made."""
    rejected_steers: list[str] = field(default_factory=list)
    """`prompt id: reason` for wrong answers that gave no valid steer (e.g. an empty token span)."""

    @property
    def wrong(self) -> int:
        return self.tried - self.correct - self.uncheckable

    def row(self) -> str:
        return (
            f"{self.task:<12} tried {self.tried:>5}  correct {self.correct:>5}  no checkable answer "
            f"{self.uncheckable:>5}  wrong {self.wrong:>5}  steers {self.steers:>5}  unusable {len(self.rejected_steers):>3}"
        )


def make_steers(
    model,
    tokenizer,
    task: Task | str,
    *,
    n: int | None = None,
    seed: int = 0,
    split: str = "train",
    generation: GenerationConfig | None = None,
    stop_after_tokens: int = STOP_AFTER_TOKENS,
    full_output: bool = False,
    meta: dict | None = None,
    progress: bool = True,
    prompts: Sequence[TaskPrompt] | None = None,
) -> tuple[list[Steer], SteerSummary]:
    """Steers from the model's answers to `n` prompts of `task` (`split` prompts, sampled with `seed`), or to
    the given `prompts` instead (`split` and `seed` then only recorded in each steer's meta and id).

    As a watcher would, generation of an answer stops `stop_after_tokens` tokens after its first mistake
    (`meta["output"]` then holds the answer up to there); `full_output=True` lets every answer run to
    its end first (slower; the steers are the same up to sampling). `meta` is added to every steer's. Every steer is checked to tokenize with a non-empty divergent span; wrong answers that fail that are
    listed in `summary.rejected_steers`, never dropped silently.
    """
    task = get_task(task)
    config = generation or GenerationConfig(max_new_tokens=task.max_new_tokens)
    if (n is None) == (prompts is None):
        raise ValueError("give either n (prompts drawn with seed) or prompts")
    prompts = list(prompts) if prompts is not None else task.prompts(n, seed, split)
    answers = generate_answers(
        model,
        tokenizer,
        [p.text for p in prompts],
        config,
        seed=seed,
        should_stop=None if full_output else stop_at_first_mistake(task, prompts),
        stop_delay=stop_after_tokens,
        progress=progress,
        desc=task.name,
    )
    summary = SteerSummary(task=task.name, tried=len(prompts))
    steers: list[Steer] = []
    meta = {
        "split": split,
        "seed": seed,
        "temperature": config.temperature,
        "top_p": config.top_p,
        **(meta or {}),
    }
    for prompt, answer in zip(prompts, answers):
        judgement = task.check(prompt, answer.text, complete=answer.complete)
        if judgement.verdict is Verdict.CORRECT:
            summary.correct += 1
            continue
        if judgement.verdict is Verdict.UNCHECKABLE:
            summary.uncheckable += 1
            continue
        try:
            steer = steer_from_mistake(
                task,
                prompt,
                answer,
                judgement.mistake,
                tokenizer,
                stop_after_tokens=stop_after_tokens,
                meta=meta,
            )
            tokenized = tokenize_steer(steer, tokenizer)
            # One side may be empty (the edit reads as a pure insertion or deletion), as the losses allow.
            if not bool(tokenized.chosen_mask.any() or tokenized.rejected_mask.any()):
                raise ValueError("empty divergent span: nothing to score")
        except ValueError as error:
            summary.rejected_steers.append(f"{prompt.id}: {error}")
            continue
        steers.append(steer)
        summary.steers += 1
    return steers, summary


def shuffle_steers(steers: list[Steer], seed: int) -> list[Steer]:
    """A seeded shuffle (tasks interleaved when several are written to one file)."""
    steers = list(steers)
    random.Random(seed).shuffle(steers)
    return steers
