"""Turning generated token ids into text one token at a time, and spotting stop strings in it.

Decoding each new token on its own is wrong in two ways. A byte-level BPE token can hold only
part of a multi-byte UTF-8 character ("日" is three bytes, possibly three tokens), and decoding
that part alone gives the replacement character "\ufffd". And some tokenizers (SentencePiece)
decode a token differently at the start of a text, dropping its leading space.

So the detokenizer decodes a small window instead: the tokens from `prefix_offset` on. The
tokens between `prefix_offset` and `read_offset` have already been emitted and are there only as
left context; whatever the window decodes to beyond their text is new. While the new text ends
in "\ufffd" a character is still incomplete, and it is held back until a later token completes it.

Stop strings are found here too, as the text grows (`StopStrings`): the text is cut where the first
one starts, and a stream is shown the text less a tail that could still become a stop string.
"""
from __future__ import annotations

# Prompt tokens kept as left context for the first output token; a few are enough for any
# tokenizer's decoding to settle (vLLM uses 5 too).
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """The output text of one sequence, grown token by token without broken characters.

    Once the sequence ends (and after `flush()`), the concatenation of everything `add` and
    `flush` returned equals `tokenizer.decode(output_ids, skip_special_tokens=...)` for a
    byte-level tokenizer. A SentencePiece tokenizer keeps the first token's leading space, which
    decoding the output alone would drop: the streamed text is the one that reads right after the
    prompt, as in vLLM.
    """

    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True,
                 stop: list[str] | None = None, include_stop_str: bool = False):
        self.tokenizer = tokenizer
        # A fast (Rust) tokenizer decodes directly: HF's `decode` wrapper costs more than
        # decoding a handful of tokens, and it runs twice per generated token.
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.skip_special_tokens = skip_special_tokens
        self.token_ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        if self._decode(self.token_ids).endswith("\ufffd"):
            # The prompt ends inside a character: output bytes would complete a prompt character
            # whose start was never output text, so decode the output without context instead.
            self.token_ids = []
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.text = ""  # all text emitted so far, cut where a stop string starts (or ends)
        self.stops = StopStrings(stop or [])
        self.include_stop_str = include_stop_str  # cut after the stop string, not before
        self.stop_string: str | None = None  # the stop string found, if any

    def add(self, token_id: int, stop_strings_count: bool = True) -> str:
        """Append one generated token; return the text it made stable (may be ""). Stop strings
        ending in that text cut `text` and set `stop_string` (unless `stop_strings_count` is
        False: while `min_tokens` is not reached they do not end the sequence)."""
        self.token_ids.append(token_id)
        emitted, window = self._window_texts()
        if len(window) <= len(emitted) or window.endswith("\ufffd"):
            return ""  # nothing new yet, or a character still waits for its other bytes
        new_text = self._emit(window[len(emitted):])
        found = self.stops.feed(new_text, report=stop_strings_count)
        if found is not None:
            at, self.stop_string = found
            self.text = self.text[:at + len(self.stop_string) * self.include_stop_str]
        return new_text

    def visible_text(self, finished: bool) -> str:
        """The text a client may see now: while the sequence runs, less the tail that the next
        tokens could still complete into a stop string."""
        return self.text if finished else self.text[:len(self.text) - self.stops.holdback]

    def flush(self) -> str:
        """Emit whatever is held back (an incomplete trailing character) once the sequence ends."""
        emitted, window = self._window_texts()
        return self._emit(window[len(emitted):])

    def _window_texts(self) -> tuple[str, str]:
        """The text of the already emitted context tokens, and of the whole window."""
        return (self._decode(self.token_ids[self.prefix_offset:self.read_offset]),
                self._decode(self.token_ids[self.prefix_offset:]))

    def _emit(self, new_text: str) -> str:
        # The tokens just emitted become the left context of the next window.
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self.text += new_text
        return new_text

    def _decode(self, token_ids: list[int]) -> str:
        # No clean-up of spaces: it is not incremental (it looks at neighbouring characters).
        if self.backend is not None:
            return self.backend.decode(token_ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)


class StopStrings:
    """Finds the first stop string in a text that grows piece by piece, in time linear in the text.

    Searching the whole text again at every step, or trying every prefix of every stop string
    against the end of the text, costs time quadratic in a stop string's length, on every step.
    Instead each stop string gets a Knuth-Morris-Pratt matcher whose state - how many of the stop
    string's first characters the text ends with - carries over from one piece to the next. That
    state is also exactly what a stream must hold back: text that a later piece may turn into a
    stop string.
    """

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.fallbacks = [_kmp_fallbacks(s) for s in stops]
        self.matched = [0] * len(stops)  # per stop string: its prefix the text ends with
        self.length = 0  # characters fed so far

    def feed(self, piece: str, report: bool = True) -> tuple[int, str] | None:
        """Read the next piece of text. Returns (where it starts, stop string) for the earliest
        stop string that ends in this piece, or None; with `report=False` matches are skipped."""
        found = None
        for i, (stop, fallback) in enumerate(zip(self.stops, self.fallbacks)):
            k = self.matched[i]
            for j, char in enumerate(piece):
                while k and stop[k] != char:
                    k = fallback[k - 1]
                k += stop[k] == char
                if k == len(stop):
                    start = self.length + j + 1 - k
                    if report and (found is None or start < found[0]):
                        found = (start, stop)
                    k = fallback[k - 1]
                    if report:
                        break
            self.matched[i] = k
        self.length += len(piece)
        return found

    @property
    def holdback(self) -> int:
        """How many trailing characters may still be the start of a stop string."""
        return max(self.matched, default=0)


def _kmp_fallbacks(s: str) -> list[int]:
    """fallback[k]: the longest proper prefix of s[:k+1] that is also its suffix (KMP's table)."""
    fallback, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fallback[k - 1]
        k += s[i] == s[k]
        fallback[i] = k
    return fallback
