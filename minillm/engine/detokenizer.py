"""Turning generated token ids into text one token at a time, and spotting stop strings in it.

Decoding each new token on its own is wrong in two ways. A byte-level BPE token can hold only
part of a multi-byte UTF-8 character ("日" is three bytes, possibly three tokens), and decoding
that part alone gives the replacement character "\ufffd". And some tokenizers (SentencePiece)
decode a token differently at the start of a text, dropping its leading space.

So the detokenizer decodes a small window instead: the tokens from `prefix_offset` on. The
tokens between `prefix_offset` and `read_offset` have already been emitted and are there only as
left context; whatever the window decodes to beyond their text is new. While the new text ends
in "\ufffd" a character is still incomplete, and it is held back until a later token completes it.
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

    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True):
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
        self.text = ""  # all text emitted so far; the engine may truncate it at a stop string

    def add(self, token_id: int) -> str:
        """Append one generated token; return the text it made stable (may be "")."""
        self.token_ids.append(token_id)
        emitted, window = self._window_texts()
        if len(window) <= len(emitted) or window.endswith("\ufffd"):
            return ""  # nothing new yet, or a character still waits for its other bytes
        return self._emit(window[len(emitted):])

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


def find_stop(text: str, new_text_len: int, stop: list[str]) -> int | None:
    """Where the earliest stop string that ends in the last `new_text_len` characters starts.

    Stop strings that lie wholly in the older text were found when it was new, so only the tail
    that could hold a stop string ending in the new part is searched. The caller cuts the text
    at the returned index: the stop string is not part of the output. None if there is none.
    """
    starts = []
    for s in stop:
        at = text.find(s, max(0, len(text) - new_text_len - len(s) + 1))
        if at != -1:
            starts.append(at)
    return min(starts, default=None)


def stop_holdback(text: str, stop: list[str]) -> int:
    """How many trailing characters of `text` to hold back from streaming: the longest tail that
    is the beginning of some stop string, which the next tokens could complete."""
    return max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
