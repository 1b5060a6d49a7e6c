"""Answer sessions of the studio: the model writes, a person cuts and corrects, the model resumes.

An answer is a list of segments. Segment 0 is generated from the prompt alone; a steer saved on the last
segment, cut after its first `cut` tokens, gives `prefix` = everything before the cut (earlier corrections
included), `rejected` = the rest of what the model wrote in that segment (to its end of turn, its token limit,
or where a Stop halted it; a stopped segment may be finished first) and `chosen` = the correction; the next
segment is generated from `prefix + chosen`.

    segment 0:  [The sum is][ 5][7][9][.]         cut = 1 (before " 5")
    steer:      prefix "The sum is ", rejected "579.", chosen "597"
    segment 1:  start_text "The sum is 597" -> [.][ Done]

A cut before a token that starts with a space keeps the space in the prefix (SmolLM2's tokenizer merges a
word's leading space into it: " 5"), so the person types the word, not the space. The trainer tokenizes
`prompt + prefix + continuation` whole either way, so the split changes no token.

Generation runs in a worker thread per segment, one at a time (one model, one lock); the HTTP layer only
reads a segment's pieces as they grow. A stop is checked after every decode step and between prefill chunks.
"""

from __future__ import annotations

import copy
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from localdpo.generation import Sampling, eos_token_ids, stream_continuation
from localdpo.reference.fingerprint import model_label
from localdpo.steers.steer import Messages, Steer
from localdpo.steers.text import IncrementalDecoder
from localdpo.steers.tokenization import render_prompt, tokenize_side, tokenize_steer
from localdpo.studio.errors import StudioError
from localdpo.tasks import Task, TaskPrompt, Verdict, get_task


@dataclass(frozen=True)
class Suggestion:
    """Where a task's checker says the answer first goes wrong, and its fix, as a cut and a correction."""

    cut: int
    chosen: str
    chosen_complete: bool
    found: str
    expected: str


@dataclass(frozen=True)
class TaskContext:
    """The task prompt an answer was drawn from (its checker suggests the cut)."""

    task: Task
    prompt: TaskPrompt


def draw_task_prompt(task_name: str, seed: int) -> TaskContext:
    """A training-split prompt of `task_name` (never a held-out one), the same for the same seed."""
    task = get_task(task_name)
    return TaskContext(task, task.prompts(1, seed, "train")[0])


PREFILL_CHUNK_TOKENS = 256
"""A prompt longer than this is read into the cache this many tokens at a time, a stop checked between
chunks, so that Cancel interrupts a long prefill within one chunk (not after the whole prompt)."""


class Segment:
    """One stretch of the answer, generated from `start_text` (the assistant text before it).

    Generation runs until the end of turn, the token limit, or a stop (`stop_event`: Stop, a cut, Cancel); a
    stopped segment can be *finished* (generation resumes where it stopped, to its end of turn or limit).
    """

    def __init__(self, index: int, start_text: str, prompt_ids: list[int], tokenizer):
        self.index = index
        self.start_text = start_text
        self.prompt_ids = prompt_ids
        """Prompt + `start_text`, tokenized as the trainer tokenizes a steer's side."""
        self.ids: list[int] = []
        self.pieces: list[str] = []
        """The text of each generated token (EOS not included); "" for a token that completes no character."""
        self.decoder = IncrementalDecoder(tokenizer)
        self.complete = False
        """The model ended its turn (EOS) within the token limit."""
        self.stopped = False
        """Generation was stopped (Stop, a cut or Cancel) before the end of turn and the token limit."""
        self.cancelled = False
        """The stop came from Cancel."""
        self.split_tail = ""
        """A character split by the stop or the token limit (its bytes incomplete, decoded as U+FFFD): never
        part of `text`, so never saved."""
        self.error: str | None = None
        self.suggestion: Suggestion | None = None
        self.steered = False
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        """Set while no generation runs on this segment."""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def push(self, token: int) -> None:
        """Add a generated token (not EOS) and its piece."""
        self.ids.append(token)
        self.pieces.append(self.decoder.push(token))

    def settle(self) -> None:
        """At the end of a generation run: the held text up to its last whole character goes to the last
        piece; a split character left over is kept apart in `split_tail` (never in `text`)."""
        whole, self.split_tail = self.decoder.settle()
        if whole:
            self.pieces[-1] += whole

    def split(self, cut: int) -> int:
        """Character offset in `text` of a cut after `cut` tokens (a word's leading space stays before it)."""
        offset = sum(len(piece) for piece in self.pieces[:cut])
        following = next((piece for piece in self.pieces[cut:] if piece), "")
        if following.startswith(" ") and following.strip():
            offset += 1
        return offset

    def cut_before(self, offset: int) -> int:
        """The last cut whose split is at or before character `offset` of `text`."""
        return max(cut for cut in range(len(self.pieces) + 1) if self.split(cut) <= offset)


class ModelRunner:
    """The one model of a studio server; `generate` calls take turns under a lock.

    `label` names the model in the steers it writes (`rejected_by`: `<name>@<first 12 hex digits of its
    fingerprint>`, `localdpo.reference.fingerprint`); `round` is the steering round its steers belong to.
    """

    def __init__(self, model, tokenizer, name: str, *, label: str | None = None, round: int = 1):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.lock = threading.Lock()
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.label = label if label is not None else model_label(name, model)
        self.round = round
        self._kept: tuple[Segment, Any] | None = None
        """The KV cache of the last stopped segment, so that finishing it does not read its prompt again."""

    def input_ids(self, messages: Messages, assistant_text: str) -> list[int]:
        """Prompt + assistant text tokenized as `tokenize_steer` tokenizes a steer's side."""
        prompt_text, is_chat = render_prompt(messages, self.tokenizer)
        ids, _, _ = tokenize_side(self.tokenizer, prompt_text, is_chat, assistant_text, add_eos=False)
        return ids

    def _prefill(self, input_ids: torch.Tensor, stop: threading.Event):
        """The KV cache of all but the last token of `input_ids` (1, T), read in chunks; None when stopped.

        A prompt of at most `PREFILL_CHUNK_TOKENS` is left to `generate` (an empty cache).
        """
        from transformers import DynamicCache

        cache = DynamicCache()
        length = input_ids.shape[1] - 1
        if length + 1 <= PREFILL_CHUNK_TOKENS:
            return cache
        for start in range(0, length, PREFILL_CHUNK_TOKENS):
            if stop.is_set():
                return None
            chunk = input_ids[:, start : min(start + PREFILL_CHUNK_TOKENS, length)]  # (1, chunk)
            self.model(input_ids=chunk, past_key_values=cache, use_cache=True)
        return cache

    def drop_cache(self, segment: Segment) -> None:
        if self._kept is not None and self._kept[0] is segment:
            self._kept = None

    @torch.no_grad()
    def generate(self, segment: Segment, sampling: Sampling, on_token) -> None:
        """Generate `segment` on from where it stands; a failure is recorded in `segment.error`, never raised.

        Sampling draws from `sampling.seed + segment.index + tokens the segment already has`."""
        try:
            with self.lock:
                segment.stopped = False
                budget = sampling.max_new_tokens - len(segment.ids)
                device = next(self.model.parameters()).device
                input_ids = torch.tensor([segment.prompt_ids + segment.ids], dtype=torch.long, device=device)
                kept, self._kept = self._kept, None
                cache = kept[1] if kept is not None and kept[0] is segment else None
                if cache is None and not segment.stop_event.is_set():
                    cache = self._prefill(input_ids, segment.stop_event)
                if cache is None or budget <= 0:
                    segment.stopped = budget > 0
                    return

                def push(token: int) -> None:
                    segment.push(token)
                    on_token(segment)

                def end_of_turn() -> None:
                    segment.complete = True

                cache = stream_continuation(
                    self.model,
                    input_ids,
                    cache,
                    sampling,
                    max_new_tokens=budget,
                    eos_ids=self.eos_ids,
                    pad_id=self.tokenizer.pad_token_id,
                    seed=sampling.seed + segment.index + len(segment.ids),
                    stop=segment.stop_event,
                    on_token=push,
                    on_end_of_turn=end_of_turn,
                )
                segment.settle()
                at_end = segment.complete or len(segment.ids) >= sampling.max_new_tokens
                segment.stopped = segment.stop_event.is_set() and not at_end
                if segment.stopped:
                    self._kept = (segment, cache)
        except Exception as error:  # reported to the page: the server itself stays up
            segment.error = f"{type(error).__name__}: {error}"


class AnswerSession:
    """One prompt's answer: its segments, its sampling settings and the task it was drawn from."""

    def __init__(
        self, session_id: str, messages: Messages, sampling: Sampling, task: TaskContext | None, runner
    ):
        self.id = session_id
        self.messages = messages
        self.sampling = sampling
        self.task = task
        self.runner = runner
        self.segments: list[Segment] = []
        self.lock = threading.Lock()
        """Held while a steer is saved or a segment finished, so two requests cannot steer the same segment."""

    def start_segment(self, start_text: str) -> Segment:
        """Start generating the next segment from `start_text` in a worker thread."""
        ids = self.runner.input_ids(self.messages, start_text)
        limit = self.runner.max_positions
        if limit is not None and len(ids) + self.sampling.max_new_tokens > limit:
            raise StudioError(
                400,
                f"prompt and answer take {len(ids)} tokens: with max_new_tokens={self.sampling.max_new_tokens} "
                f"that is past the model's {limit} positions",
            )
        segment = Segment(len(self.segments), start_text, ids, self.runner.tokenizer)
        self.segments.append(segment)
        self._run(segment)
        return segment

    def _run(self, segment: Segment) -> None:
        segment.finished.clear()
        worker = threading.Thread(
            target=self._generate, args=(segment,), name=f"studio-{self.id}-{segment.index}", daemon=True
        )
        worker.start()

    def _generate(self, segment: Segment) -> None:
        try:
            self.runner.generate(segment, self.sampling, self._check_task)
            if segment.suggestion is None and not segment.stopped and not segment.error:
                segment.suggestion = self.suggest(segment, complete=segment.complete)
        finally:
            segment.finished.set()

    def stop(self, segment: Segment) -> None:
        """Stop generating `segment` (within one decode step or prefill chunk); what it wrote stays."""
        segment.stop_event.set()

    def cancel(self) -> None:
        """Stop whatever this session is generating, marking it cancelled."""
        for segment in self.segments:
            if not segment.finished.is_set():
                segment.cancelled = True
                segment.stop_event.set()

    def finish(self, segment: Segment) -> int:
        """Resume a stopped `segment` to its end of turn or token limit (in a worker thread); gives the
        number of tokens it had (the index of the first new one)."""
        with self.lock:
            self._check_steerable(segment)
            if not segment.finished.is_set():
                raise StudioError(409, f"segment {segment.index} is still being generated")
            if not segment.stopped:
                raise StudioError(409, f"segment {segment.index} already ended: there is nothing to finish")
            segment.stop_event.clear()
            segment.cancelled = False
            written = len(segment.pieces)
            self._run(segment)
            return written

    def _check_task(self, segment: Segment) -> None:
        """Mark the first mistake the task's checker finds in the text so far (once per segment)."""
        if self.task is None or segment.suggestion is not None or not segment.pieces[-1]:
            return
        segment.suggestion = self.suggest(segment, complete=False)

    def suggest(self, segment: Segment, *, complete: bool) -> Suggestion | None:
        """The cut and correction at the checker's first mistake, when it lies in `segment`."""
        if self.task is None:
            return None
        answer = segment.start_text + segment.text
        judgement = self.task.task.check(self.task.prompt, answer, complete=complete)
        if judgement.verdict is not Verdict.WRONG:
            return None
        mistake = judgement.mistake
        local = mistake.start - len(segment.start_text)
        if local < 0:
            return None  # in text the person already wrote or kept
        cut = segment.cut_before(local)
        correction = self.task.task.correct(self.task.prompt, answer, mistake)
        chosen = segment.text[segment.split(cut) : local] + correction.text
        return Suggestion(cut, chosen, correction.ends_answer, mistake.found, mistake.expected)

    def _check_steerable(self, segment: Segment) -> None:
        if segment.index != len(self.segments) - 1 or segment.steered:
            raise StudioError(409, f"segment {segment.index} was already steered: steer the latest one")
        if segment.error:
            raise StudioError(409, f"segment {segment.index} failed: {segment.error}")

    def steer_at(
        self, segment: Segment, cut: int, chosen: str, chosen_complete: bool
    ) -> tuple[Steer, list[str]]:
        """The steer of a cut after `cut` tokens of `segment` (not generating), corrected to `chosen`, and
        the warnings it needs confirmed (`degenerate_warnings`).

        Its rejected side is what the model wrote from the cut to where generation ended (end of turn, token
        limit, or a stop), a split character at the end left out.
        """
        self._check_steerable(segment)
        if not segment.finished.is_set():
            raise StudioError(
                409,
                f"segment {segment.index} is still being generated: stop it (the rejected side is then what "
                "the model wrote so far) or wait for its end, then save",
            )
        if not 0 <= cut <= len(segment.pieces):
            raise StudioError(400, f"field 'cut': {cut} is outside 0..{len(segment.pieces)}")
        split = segment.split(cut)
        meta = {
            "source": "studio",
            "model": self.runner.name,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_new_tokens": self.sampling.max_new_tokens,
            "seed": self.sampling.seed,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "session": self.id,
            "segment": segment.index,
            "cut_token": cut,
            "rejected_tokens": len(segment.pieces) - cut,
            "rejected_end": "end_of_turn"
            if segment.complete
            else ("stopped" if segment.stopped else "token_limit"),
        }
        if self.task is not None:
            meta.update(task=self.task.task.name, prompt_id=self.task.prompt.id)
        try:
            steer = Steer(
                prompt=self.messages,
                prefix=segment.start_text + segment.text[:split],
                rejected=segment.text[split:],
                chosen=chosen,
                chosen_complete=chosen_complete,
                rejected_complete=segment.complete and not segment.split_tail,
                rejected_by=self.runner.label,
                round=self.runner.round,
                id=f"studio-{secrets.token_hex(6)}",
                meta=meta,
            )
            tokenized = tokenize_steer(steer, self.runner.tokenizer)
        except ValueError as error:
            raise StudioError(400, f"not a usable steer: {error}") from None
        if not bool(tokenized.chosen_mask.any() or tokenized.rejected_mask.any()):
            raise StudioError(400, "not a usable steer: no token differs between chosen and rejected")
        return steer, degenerate_warnings(steer, tokenized, segment.split_tail)


def degenerate_warnings(steer: Steer, tokenized, split_tail: str = "") -> list[str]:
    """One line per way `steer` would train something its maker likely did not mean (the page asks to confirm).

    - the correction is the rejected text itself, differing only by an end of turn: it trains the model only
      to stop, or (the model had stopped) only not to stop, there;
    - the correction is the start of what the model wrote, or scores no token: the steer would only push the
      model's own continuation down (a text prefix whose tokens differ only re-tokenizes the same text);
    - the model's last token(s) hold a character split by a stop or the token limit: left out of `rejected`.
    """
    warnings = []
    if steer.chosen == steer.rejected:
        if steer.rejected_complete:
            warnings.append(
                "the correction is what the model wrote without its end of turn: this steer trains the model "
                "not to stop here"
            )
        else:
            warnings.append(
                "the correction is what the model wrote plus an end of turn: this steer only trains the model "
                "to stop here"
            )
    elif not steer.chosen_complete and steer.rejected.startswith(steer.chosen):
        warnings.append(
            "the correction is the start of what the model wrote: the steer would only push the model's own "
            "continuation down"
        )
    elif not bool(tokenized.chosen_mask.any()):
        warnings.append(
            "the correction scores no token (the trainer finds no chosen token that differs): the steer would "
            "only push the model's own text down"
        )
    if split_tail:
        warnings.append(
            "the model's last token ends in a split character (cut by the stop or the token limit): "
            "it is left out, the rejected side ends at the last whole character"
        )
    return warnings


def load_tuned(start, run_name: str, adapter_dir: Path):
    """A `ModelRunner` of the studio's starting model (`start`, a `ModelRunner`) with the adapter in
    `adapter_dir` merged into a copy of its weights: named `<start name>+<run name>`, labelled by the merged
    weights' fingerprint, writing steers of the round after the start model's."""
    from localdpo.models.loading import merge_adapter

    try:
        merged = merge_adapter(copy.deepcopy(start.model), adapter_dir)
    except Exception as error:  # a run of another model: the adapter's shapes do not fit
        raise StudioError(
            400, f"cannot load the adapter of run {run_name}: {type(error).__name__}: {error}"
        ) from None
    merged.eval()
    name = f"{start.name}+{run_name}"
    # model_label fingerprints the merged weights: the adapter is in the label, not only in the name.
    return ModelRunner(merged, start.tokenizer, name, label=model_label(name, merged), round=start.round + 1)


class Studio:
    """One server's models, steer file, training runs and open answer sessions (the oldest closed past
    `max_sessions`).

    `start_runner` is the model the studio was started with; `runner` the one new answers are written by: the
    start model, or a tuned one (`use_model`: a training run's adapter merged into a copy of the start model;
    the latest one loaded is kept). A session keeps the model it was opened with.
    """

    def __init__(
        self, runner: ModelRunner, store, *, max_sessions: int = 32, token_limit: int = 1024, training=None
    ):
        self.start_runner = self.runner = runner
        self.tuned: ModelRunner | None = None
        self.store = store
        self.training = training
        """`localdpo.studio.training.Training`, or None (training from the page is off)."""
        self.max_sessions, self.token_limit = max_sessions, token_limit
        self.sessions: OrderedDict[str, AnswerSession] = OrderedDict()
        self.lock = threading.Lock()
        self.model_lock = threading.Lock()

    def tuned_runner(self, run: str) -> ModelRunner:
        """The start model with training run `run`'s adapter merged in (loaded once, the last one kept)."""
        if self.training is None:
            raise StudioError(404, "training is off in this studio")
        with self.model_lock:
            name = f"{self.start_runner.name}+{run}"
            if self.tuned is None or self.tuned.name != name:
                adapter = self.training.adapter_of(run)
                tuned = load_tuned(self.start_runner, run, adapter)
                if self.runner is self.tuned:
                    self.runner = self.start_runner
                self.tuned = tuned
            return self.tuned

    def use_model(self, run: str | None) -> ModelRunner:
        """Write new answers with training run `run`'s tuned model, or (None) with the start model."""
        runner = self.start_runner if run is None else self.tuned_runner(run)
        self.runner = runner
        return runner

    def open(
        self,
        messages: Messages,
        sampling: Sampling,
        task: TaskContext | None,
        runner: ModelRunner | None = None,
    ) -> AnswerSession:
        """A new session whose first segment is being generated, by `runner` (default: the studio's `runner`)."""
        runner = runner if runner is not None else self.runner
        session = AnswerSession(secrets.token_hex(8), messages, sampling, task, runner)
        session.start_segment("")
        with self.lock:
            self.sessions[session.id] = session
            while len(self.sessions) > self.max_sessions:
                _, oldest = self.sessions.popitem(last=False)
                oldest.cancel()
        return session

    def get(self, session_id: str) -> AnswerSession:
        with self.lock:
            session = self.sessions.get(session_id)
        if session is None:
            raise StudioError(404, f"no open session {session_id!r} (closed, or the server restarted)")
        return session

    def segment(self, session: AnswerSession, index: int) -> Segment:
        if not 0 <= index < len(session.segments):
            raise StudioError(404, f"session {session.id} has no segment {index}")
        return session.segments[index]

    def save_steer(
        self,
        session: AnswerSession,
        segment: Segment,
        cut: int,
        chosen: str,
        chosen_complete: bool,
        *,
        confirm: bool = False,
    ) -> tuple[Steer, Segment | None, int]:
        """Append the steer to the file and start the next segment from its corrected text (unless it ends);
        also gives the number of steers now in the file.

        A steer with `degenerate_warnings` is refused (409, `confirm` in the answer) unless `confirm`.
        """
        with session.lock:
            steer, warnings = session.steer_at(segment, cut, chosen, chosen_complete)
            if warnings and not confirm:
                raise StudioError(409, "; ".join(warnings), confirm=True)
            count = self.store.append(steer)
            segment.steered = True
            session.runner.drop_cache(segment)
        if chosen_complete:
            return steer, None, count
        return steer, session.start_segment(steer.prefix + steer.chosen), count
