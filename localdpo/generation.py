"""Generation: the package's one place where a model writes text.

- Settings: `Sampling` (greedy at temperature 0, else temperature and top-p from a seed), `GenerationConfig`
  (the same plus batching), `Generation` (one answer).
- Prompts: `render_chat` / `prompt_ids` (a user turn through the chat template, as `tokenize_steer` renders
  a prompt), `eos_token_ids` (the end-of-turn set), `pad_token_id`.
- Stop rules: `_StopRows` (a row stops a few tokens after a predicate on its text, e.g.
  `localdpo.tasks.stop_at_first_mistake`, a task's checker), `_StopWhenSet` (an event, checked after every step).
- Decoders: `greedy_token_continuations` (greedy over token-id rows: KV cache, finished rows leave the batch,
  `_greedy_decode`), `generate_answers` (rendered prompts, greedy or sampled, decoded to text) and
  `stream_continuation` (one row token by token, greedy or sampled, stoppable: the studio). Sampling runs
  transformers' `generate` (`_transformers_generate`), so seeded draws are transformers' own.

Used by steer making, task evaluation, the steer metrics, the drift set, the GGUF round trip and the studio.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from localdpo.forward import kv_cache_kwargs, returned_cache
from localdpo.steers.tokenization import render_prompt


@dataclass(frozen=True)
class Sampling:
    """How tokens are picked: greedy at temperature 0, else drawn with temperature and top-p from a seed."""

    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling threshold (ignored when greedy)."""
    max_new_tokens: int = 256
    """Generated tokens at most (per answer; per segment in the studio)."""
    seed: int = 0
    """Sampling seed (each decoder says what it adds for each batch or segment)."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def generate_kwargs(self) -> dict:
        """The decoding arguments of transformers' `generate` (top-k off; greedy when the temperature is 0)."""
        if self.greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None}


@dataclass(frozen=True)
class GenerationConfig(Sampling):
    """`Sampling` of many answers at once (`generate_answers`), in left-padded batches."""

    max_new_tokens: int = 96
    """Generated tokens per answer at most."""
    batch_size: int = 32
    """Prompts decoded together (left-padded)."""
    share_prefix: bool = True
    """Run the tokens all prompts of a batch start with (chat template, task wording) once, not per row."""


@dataclass(frozen=True)
class Generation:
    """One generated answer."""

    text: str
    """Decoded assistant text, without special tokens."""
    complete: bool
    """The model ended its turn (EOS) within `max_new_tokens`."""
    num_tokens: int
    """Generated tokens, EOS included."""


def render_chat(tokenizer, user_text: str) -> str:
    """The user turn rendered with the tokenizer's chat template, ready for the assistant's answer (the text
    itself when the tokenizer has no template)."""
    if getattr(tokenizer, "chat_template", None):
        text, _ = render_prompt([{"role": "user", "content": user_text}], tokenizer)
        return text
    return user_text


def prompt_ids(tokenizer, user_text: str) -> list[int]:
    """Token ids of a user prompt as the model sees it before answering: `render_chat`, special tokens added
    only when no chat template wrote them (as `tokenize_steer` tokenizes a prompt)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return list(
        tokenizer(render_chat(tokenizer, user_text), add_special_tokens=not has_template)["input_ids"]
    )


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the model's generation config's and the tokenizer's end-of-turn."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids]) | {tokenizer.eos_token_id}
    ids.discard(None)
    return ids


def pad_token_id(tokenizer) -> int:
    """The id left padding is written with (never attended): the pad token, else EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draws from `torch.manual_seed(seed)` inside; the global (CPU) RNG state is restored afterwards."""
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(rng_state)


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


class _StopWhenSet:
    """Stopping criterion: ends `generate` once `event` is set (checked after every decode step)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )  # (B,)


class _TokenStreamer:
    """`generate` streamer of one row: `on_token(id)` for each new token up to its first end-of-turn, then
    `on_end_of_turn()` once (the first `put` is the prompt)."""

    def __init__(
        self, eos_ids: set[int], on_token: Callable[[int], None], on_end_of_turn: Callable[[], None]
    ):
        self.eos_ids, self.on_token, self.on_end_of_turn = eos_ids, on_token, on_end_of_turn
        self.prompt_seen = False
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.flatten().tolist():
            if self.ended:
                continue
            if token in self.eos_ids:
                self.ended = True
                self.on_end_of_turn()
                continue
            self.on_token(token)

    def end(self) -> None:
        pass


def _takes_logits_to_keep(model) -> bool:
    """Whether the model (or, under a peft wrapper, which passes it on, its base model) computes logits for
    the last positions only when asked."""
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


def _transformers_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache,
    sampling: Sampling,
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int | None,
    stopping: list | None = None,
    streamer=None,
):
    """transformers' `generate` with `sampling`'s decoding rule: `(B, T + new)` ids, or (with a `streamer`)
    its output object. `cache` (or None) holds columns already read."""
    from transformers import StoppingCriteriaList

    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids),
        stopping_criteria=StoppingCriteriaList(stopping) if stopping else None,
        max_new_tokens=max_new_tokens,
        use_cache=True,
        **({"streamer": streamer, "return_dict_in_generate": True} if streamer is not None else {}),
        **(kv_cache_kwargs(cache) if cache is not None else {}),
        **sampling.generate_kwargs(),
    )


def _generate_with_transformers(
    model, input_ids, attention_mask, cache, config: GenerationConfig, eos_ids: set[int], pad_id: int, stopper
) -> list[tuple[list[int], bool]]:
    """Continuations by `model.generate` (sampled with temperature and top-p, or greedy at temperature 0, every
    row computed to the end of the batch), `(new token ids, ended with EOS)` per row. `generate_answers` uses
    it to sample; `experiments/bench_generation.py` measures `_greedy_decode` against it."""
    width = input_ids.shape[1]
    output = _transformers_generate(
        model,
        input_ids,
        attention_mask,
        cache if cache.get_seq_length() else None,
        config,
        max_new_tokens=config.max_new_tokens,
        eos_ids=eos_ids,
        pad_id=pad_id,
        stopping=[stopper] if stopper else None,
    )  # (B, width + new)
    rows = []
    for row, new in enumerate(output[:, width:].tolist()):
        if stopper is not None and row in stopper.stopped_at:
            rows.append((new[: stopper.stopped_at[row]], False))
        else:
            cut = next((j for j, token in enumerate(new) if token in eos_ids), None)
            rows.append((new, False) if cut is None else (new[:cut], True))
    return rows


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix shared by all rows, leaving every row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    p = 0
    while p < limit and all(r[p] == rows[0][p] for r in rows):
        p += 1
    return p


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
    should_stop=None,
    stop_delay: int = 0,
    progress: bool = True,
    desc: str = "generating",
) -> list[Generation]:
    """Answers to `user_texts` (chat template, left padding, KV cache), in input order.

    Prompts are batched by rendered length so padding stays small. `should_stop(i, partial_text)`, when
    given, ends answer i `stop_delay` tokens after it first returns True (that answer has
    `complete=False`). Greedy decoding computes only the rows still running (`_greedy_decode`); sampling
    runs `model.generate` and draws from `torch.manual_seed(config.seed + batch index)`; the global RNG state
    is restored afterwards.
    """
    from tqdm.auto import tqdm

    encoded = [prompt_ids(tokenizer, text) for text in user_texts]
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer)
    results: list[Generation | None] = [None] * len(encoded)
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
            if config.greedy:
                rows = _greedy_decode(
                    model,
                    input_ids,
                    attention_mask,
                    cache,
                    max_new_tokens=config.max_new_tokens,
                    eos_ids=eos_ids,
                    stop=stopper.check if stopper is not None else None,
                )
            else:
                with seeded(config.seed + batch_index):
                    rows = _generate_with_transformers(
                        model, input_ids, attention_mask, cache, config, eos_ids, pad_id, stopper
                    )
            for i, (ids, complete) in zip(batch, rows):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                results[i] = Generation(text, complete, len(ids) + complete)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]


@torch.no_grad()
def stream_continuation(
    model,
    input_ids: torch.Tensor,
    cache,
    sampling: Sampling,
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int | None,
    seed: int,
    stop: threading.Event,
    on_token: Callable[[int], None],
    on_end_of_turn: Callable[[], None],
):
    """Continue one row token by token; gives the KV cache after it (its last token not yet read).

    `input_ids` (1, T) is the whole row, `cache` its first columns already read (possibly none). Each new
    token goes to `on_token` as it is picked, up to the first end-of-turn, which calls `on_end_of_turn`
    instead; generation also ends at `max_new_tokens` or once `stop` is set (checked after every step).
    Sampling draws from `torch.manual_seed(seed)`; the global RNG state is restored afterwards.
    """
    streamer = _TokenStreamer(eos_ids, on_token, on_end_of_turn)
    with seeded(seed):
        output = _transformers_generate(
            model,
            input_ids,
            torch.ones_like(input_ids),
            cache,
            sampling,
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
            pad_id=pad_id,
            stopping=[_StopWhenSet(stop)],
            streamer=streamer,
        )
    return output.past_key_values
