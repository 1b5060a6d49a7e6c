"""Token pieces: the text each token adds, so that the pieces of the first k tokens are their decoded text.

Decoding token by token is not decoding the whole: byte-level BPE splits one character over several tokens
(SmolLM2: the emoji "😀" is `ĠðŁĺ` + `Ģ`, each undecodable alone). `IncrementalDecoder` decodes the whole
sequence at each token and gives the new text as that token's piece, holding back a trailing incomplete
character (an empty piece) until the token that completes it.
"""

from __future__ import annotations

from collections.abc import Iterable

REPLACEMENT_CHAR = "\ufffd"


def decode(tokenizer, ids: list[int], *, skip_special_tokens: bool = True) -> str:
    """The text of `ids` as the studio shows and saves it (no clean-up of spaces, so pieces never shift)."""
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


class IncrementalDecoder:
    """Pieces of a growing token sequence; `text` is always the concatenation of the pieces given so far."""

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""

    def _advance(self, full: str) -> str:
        if not full.startswith(self.text):
            raise RuntimeError(
                f"decoded text changed before the last token ({self.text[-20:]!r} -> {full[-20:]!r})"
            )
        piece = full[len(self.text) :]
        self.text = full
        return piece

    def push(self, token_id: int) -> str:
        """The piece of `token_id`: "" while it ends in an incomplete character."""
        self.ids.append(int(token_id))
        full = decode(self.tokenizer, self.ids, skip_special_tokens=self.skip_special_tokens)
        if full.endswith(REPLACEMENT_CHAR):
            return ""
        return self._advance(full)

    def settle(self) -> tuple[str, str]:
        """At a stop: (the held text up to its last whole character, now given out; the split character left
        out). Later tokens may still complete that character: `text` ends before it."""
        full = decode(self.tokenizer, self.ids, skip_special_tokens=self.skip_special_tokens)
        whole = full.rstrip(REPLACEMENT_CHAR)
        return self._advance(whole), full[len(whole) :]

    def flush(self) -> str:
        """What was held back at the end of the sequence (a real replacement character, or "")."""
        return self._advance(decode(self.tokenizer, self.ids, skip_special_tokens=self.skip_special_tokens))


def token_pieces(tokenizer, ids: Iterable[int], *, skip_special_tokens: bool = False) -> list[str]:
    """One piece per token of `ids`; their concatenation is the decoded text (held bytes go to the last)."""
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
    pieces = [decoder.push(token) for token in ids]
    tail = decoder.flush()
    if tail:
        pieces[-1] += tail
    return pieces
