"""Answer sessions of the studio: the model writes, a person cuts and corrects, the model resumes.

An answer is a list of segments. Segment 0 is generated from the prompt alone; a steer saved on the last
segment, cut after its first `cut` tokens, gives `prefix` = everything before the cut (earlier corrections
included), `rejected` = the rest of that segment (generated to its end, so the rejected side is whole) and
`chosen` = the correction; the next segment is generated from `prefix + chosen`.

    segment 0:  [The sum is][ 5][7][9][.]         cut = 1 (before " 5")
    steer:      prefix "The sum is ", rejected "579.", chosen "597"
    segment 1:  start_text "The sum is 597" -> [.][ Done]

A cut before a token that starts with a space keeps the space in the prefix (SmolLM2's tokenizer merges a
word's leading space into it: " 5"), so the person types the word, not the space. The trainer tokenizes
`prompt + prefix + continuation` whole either way, so the split changes no token.

Generation runs in a worker thread per segment, one at a time (one model, one lock); the HTTP layer only
reads a segment's pieces as they grow.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from localdpo.steers import Messages, Steer
from localdpo.studio.errors import StudioError
from localdpo.studio.text import IncrementalDecoder
from localdpo.tasks import Task, TaskPrompt, Verdict, get_task
from localdpo.tokenization import _tokenize_side, render_prompt, tokenize_steer


@dataclass(frozen=True)
class Sampling:
    """How a session's answer is generated."""

    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling threshold (ignored when greedy)."""
    max_new_tokens: int = 256
    """Tokens per segment at most."""
    seed: int = 0
    """Sampling seed; segment k draws from `seed + k`."""


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


class Segment:
    """One stretch of the answer, generated from `start_text` (the assistant text before it)."""

    def __init__(self, index: int, start_text: str):
        self.index = index
        self.start_text = start_text
        self.ids: list[int] = []
        self.pieces: list[str] = []
        """The text of each generated token (EOS not included); "" for a token that completes no character."""
        self.complete = False
        """The model ended its turn (EOS) within the token limit."""
        self.cancelled = False
        self.error: str | None = None
        self.suggestion: Suggestion | None = None
        self.steered = False
        self.finished = threading.Event()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

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


class _Cancelled:
    """Stopping criterion: ends `generate` once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _SegmentStreamer:
    """`generate` streamer: appends each new token's piece to a segment (the first `put` is the prompt)."""

    def __init__(self, segment: Segment, decoder: IncrementalDecoder, eos_ids: set[int], on_token):
        self.segment, self.decoder, self.eos_ids, self.on_token = segment, decoder, eos_ids, on_token
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.flatten().tolist():
            if self.segment.complete:
                continue
            if token in self.eos_ids:
                self.segment.complete = True
                continue
            self.segment.ids.append(token)
            self.segment.pieces.append(self.decoder.push(token))
            self.on_token(self.segment)

    def end(self) -> None:
        pass


class ModelRunner:
    """The one model of a studio server; `generate` calls take turns under a lock."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    def input_ids(self, messages: Messages, assistant_text: str) -> list[int]:
        """Prompt + assistant text tokenized as `tokenize_steer` tokenizes a steer's side."""
        prompt_text, is_chat = render_prompt(messages, self.tokenizer)
        ids, _, _ = _tokenize_side(self.tokenizer, prompt_text, is_chat, assistant_text, add_eos=False)
        return ids

    @torch.no_grad()
    def generate(
        self, segment: Segment, ids: list[int], sampling: Sampling, cancel: threading.Event, on_token
    ):
        """Generate `segment` from `ids`; a failure is recorded in `segment.error`, never raised."""
        try:
            with self.lock:
                if cancel.is_set():
                    segment.cancelled = True
                    return
                device = next(self.model.parameters()).device
                input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
                decoder = IncrementalDecoder(self.tokenizer)
                kwargs: dict[str, Any] = {"do_sample": sampling.temperature > 0, "top_k": None}
                if sampling.temperature > 0:
                    kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
                else:
                    kwargs.update(temperature=None, top_p=None)
                rng_state = torch.random.get_rng_state()
                torch.manual_seed(sampling.seed + segment.index)
                try:
                    from transformers import StoppingCriteriaList

                    self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=sampling.max_new_tokens,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=sorted(self.eos_ids),
                        streamer=_SegmentStreamer(segment, decoder, self.eos_ids, on_token),
                        stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                        use_cache=True,
                        **kwargs,
                    )
                finally:
                    torch.random.set_rng_state(rng_state)
                tail = decoder.flush()
                if tail:
                    segment.pieces[-1] += tail
                segment.cancelled = cancel.is_set() and not segment.complete
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
        self.cancel_event = threading.Event()
        self.lock = threading.Lock()
        """Held while a steer is saved, so two requests cannot steer the same segment."""

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
        segment = Segment(len(self.segments), start_text)
        self.segments.append(segment)
        worker = threading.Thread(
            target=self._generate,
            args=(segment, ids),
            name=f"studio-{self.id}-{segment.index}",
            daemon=True,
        )
        worker.start()
        return segment

    def _generate(self, segment: Segment, ids: list[int]) -> None:
        try:
            self.runner.generate(segment, ids, self.sampling, self.cancel_event, self._check_task)
            if segment.suggestion is None and not segment.cancelled and not segment.error:
                segment.suggestion = self.suggest(segment, complete=segment.complete)
        finally:
            segment.finished.set()

    def cancel(self) -> None:
        self.cancel_event.set()

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

    def steer_at(
        self, segment: Segment, cut: int, chosen: str, chosen_complete: bool, model_name: str
    ) -> Steer:
        """The steer of a cut after `cut` tokens of the finished `segment`, corrected to `chosen`."""
        if segment.index != len(self.segments) - 1 or segment.steered:
            raise StudioError(409, f"segment {segment.index} was already steered: steer the latest one")
        if segment.error:
            raise StudioError(409, f"segment {segment.index} failed: {segment.error}")
        if segment.cancelled:
            raise StudioError(409, f"segment {segment.index} was cancelled: generate the answer again")
        if not 0 <= cut <= len(segment.pieces):
            raise StudioError(400, f"field 'cut': {cut} is outside 0..{len(segment.pieces)}")
        split = segment.split(cut)
        meta = {
            "source": "studio",
            "model": model_name,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_new_tokens": self.sampling.max_new_tokens,
            "seed": self.sampling.seed,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "session": self.id,
            "segment": segment.index,
            "cut_token": cut,
            "rejected_tokens": len(segment.pieces) - cut,
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
                rejected_complete=segment.complete,
                id=f"studio-{secrets.token_hex(6)}",
                meta=meta,
            )
            tokenized = tokenize_steer(steer, self.runner.tokenizer)
        except ValueError as error:
            raise StudioError(400, f"not a usable steer: {error}") from None
        if not bool(tokenized.chosen_mask.any() or tokenized.rejected_mask.any()):
            raise StudioError(400, "not a usable steer: no token differs between chosen and rejected")
        return steer


class Studio:
    """One server's model, steer file and open answer sessions (the oldest closed past `max_sessions`)."""

    def __init__(self, runner: ModelRunner, store, *, max_sessions: int = 32, token_limit: int = 1024):
        self.runner, self.store = runner, store
        self.max_sessions, self.token_limit = max_sessions, token_limit
        self.sessions: OrderedDict[str, AnswerSession] = OrderedDict()
        self.lock = threading.Lock()

    def open(self, messages: Messages, sampling: Sampling, task: TaskContext | None) -> AnswerSession:
        """A new session whose first segment is being generated."""
        session = AnswerSession(secrets.token_hex(8), messages, sampling, task, self.runner)
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
        self, session: AnswerSession, segment: Segment, cut: int, chosen: str, chosen_complete: bool
    ) -> tuple[Steer, Segment | None]:
        """Append the steer to the file and start the next segment from its corrected text (unless it ends).

        Call once `segment.finished` is set (the rejected side is then whole).
        """
        with session.lock:
            steer = session.steer_at(segment, cut, chosen, chosen_complete, self.runner.name)
            self.store.append(steer)
            segment.steered = True
        if chosen_complete:
            return steer, None
        return steer, session.start_segment(steer.prefix + steer.chosen)
