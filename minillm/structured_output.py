"""Structured outputs: a grammar decides which tokens may come next, so the text always parses.

A request's `StructuredOutputsParams` (vLLM's) is compiled once into an xgrammar grammar over
the engine's vocabulary; each sample gets a `GrammarMatcher`, the grammar's state after the
tokens so far. Every step the matcher writes a bitmask of the tokens allowed next (one bit per
token), the sampler sets the others' logits to -inf, and the chosen token advances the matcher.
A small model cannot write valid JSON on its own; masked this way, it cannot write anything else.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

KINDS = ("json", "regex", "choice", "grammar", "json_object")
COMPILED_GRAMMARS_KEPT = 128


@dataclass
class StructuredOutputsParams:
    """Exactly one constraint: a JSON schema (dict or string), a regular expression, one string
    out of `choice`, an EBNF grammar (xgrammar's dialect), or any JSON object."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self):
        given = [kind for kind in KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured_outputs needs exactly one of {', '.join(KINDS)}; "
                             f"got {given or 'none'}")
        if self.choice is not None and not (
                self.choice and all(isinstance(c, str) for c in self.choice)):
            raise ValueError("structured_outputs.choice must be a non-empty list of strings")

    def key(self) -> tuple[str, str]:
        """(kind, specification as text): equal constraints share one compiled grammar."""
        kind = next(k for k in KINDS if getattr(self, k) not in (None, False))
        spec = getattr(self, kind)
        if isinstance(spec, str):
            return kind, spec
        return kind, json.dumps(spec, sort_keys=True, ensure_ascii=False)


class GrammarCompiler:
    """Compiles constraints against one tokenizer, keeping the last compiled grammars by key.

    xgrammar is imported, and its tokenizer tables built, at the first structured request: an
    engine that never gets one pays nothing."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.stop_token_ids = stop_token_ids
        self.compiled = functools.lru_cache(maxsize=COMPILED_GRAMMARS_KEPT)(self._compile)

    @functools.cached_property
    def xgr_compiler(self):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                  stop_token_ids=self.stop_token_ids)
        return xgr.GrammarCompiler(info)

    def matcher(self, params: StructuredOutputsParams):
        """A fresh matcher (the grammar's start state); a constraint that does not compile
        raises ValueError naming it."""
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compiled(*params.key()))

    def _compile(self, kind: str, spec: str):
        compiler = self.xgr_compiler
        try:
            if kind == "json":
                # Compact JSON: with free whitespace a small model may emit spaces forever.
                return compiler.compile_json_schema(spec, any_whitespace=False)
            if kind == "json_object":  # any JSON object, as vLLM compiles it
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if kind == "regex":
                return compiler.compile_regex(spec)
            if kind == "choice":  # an EBNF alternation of the strings, quoted like JSON
                choices = json.loads(spec)
                return compiler.compile_grammar(
                    "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices))
            return compiler.compile_grammar(spec)
        except RuntimeError as error:  # xgrammar's parse and schema errors
            message = str(error).strip().splitlines()[-1]
            raise ValueError(f"structured_outputs.{kind} is not valid: {message}") from None


def fill_bitmask(matchers: list, vocab_size: int) -> torch.Tensor:
    """One row per matcher: bit t of a row is set when token t may come next."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(matchers), vocab_size)
    for row, matcher in enumerate(matchers):
        matcher.fill_next_token_bitmask(bitmask, row)
    return bitmask
