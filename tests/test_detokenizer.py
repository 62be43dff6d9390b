"""Incremental detokenization and stop strings, checked against full decodes and brute force."""
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from checkpoints import TEXT, make_tokenizer
from minillm.engine.detokenizer import IncrementalDetokenizer, StopStrings

# Characters of one to four UTF-8 bytes, so byte-level tokens split them in every possible way.
WORDS = ["the", "fox", "café", "naïve", "日本語", "東京", "привет", "Ελλάδα", "🙂", "🦊🦊",
         "ü", "…", "€5", ".", ",", "\n"]
MULTILINGUAL_TEXT = " ".join(WORDS * 3) + " 日本語のテキスト 🙂🙃 éàü"


def multilingual_tokenizer(folder):
    """A byte-level BPE trained on multi-byte text: its merges cut inside and across characters."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([MULTILINGUAL_TEXT] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def project_tokenizer(tmp_path_factory):
    """The tokenizer of the test checkpoints: trained on ASCII, so other characters are bytes."""
    return make_tokenizer(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module", params=["project", "multilingual"])
def tokenizer(request, project_tokenizer, tmp_path_factory):
    if request.param == "project":
        return project_tokenizer
    return multilingual_tokenizer(tmp_path_factory.mktemp("multilingual"))


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(WORDS) + rng.choice(["", " "]) for _ in range(rng.randrange(1, 25)))


def stream(tokenizer, prompt_ids, output_ids, skip_special_tokens=True) -> list[str]:
    """Every chunk the detokenizer emits, the flush at the end included."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
    chunks = [detok.add(t) for t in output_ids] + [detok.flush()]
    assert detok.text == "".join(chunks)
    return chunks


def test_streamed_text_never_breaks_a_character(tokenizer):
    rng = random.Random()
    held_back = 0
    for _ in range(40):
        text = random_text(rng)
        ids = tokenizer.encode(text)
        prompt = tokenizer.encode(random_text(rng))
        chunks = stream(tokenizer, prompt, ids)
        assert "".join(chunks) == text == tokenizer.decode(ids)
        assert not any("\ufffd" in c for c in chunks), (text, chunks)
        held_back += sum(c == "" for c in chunks[:-1])
    assert held_back > 0  # the texts did split characters across tokens


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_tokens_stream_to_the_full_decode(tokenizer, skip_special_tokens):
    rng, vocab = random.Random(), len(tokenizer)
    for _ in range(60):
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(0, 8))]
        output = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        output += [tokenizer.eos_token_id] * rng.randrange(0, 2)
        chunks = stream(tokenizer, prompt, output, skip_special_tokens)
        full = tokenizer.decode(output, skip_special_tokens=skip_special_tokens)
        assert "".join(chunks) == full, (prompt, output)
        if "\ufffd" not in full:
            assert not any("\ufffd" in c for c in chunks), (prompt, output, chunks)
        # Only the final flush may end in a broken character.
        assert not any(c.endswith("\ufffd") for c in chunks[:-1]), (prompt, output, chunks)


def test_leading_spaces_survive_a_sentencepiece_style_decoder():
    # Llama's decoder drops the space of the text's first "▁word" token, so decoding new tokens
    # on their own would glue the words together; the context window keeps the spaces.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=200,
                                                        special_tokens=["<unk>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    prompt, output = tokenizer.encode("The quick"), tokenizer.encode("brown fox jumps over")
    assert tokenizer.decode(output[1:2]) == "fox"  # alone, a token loses its space
    assert "".join(stream(tokenizer, prompt, output)) == " brown fox jumps over"


def test_special_tokens_are_kept_or_skipped(tokenizer):
    ids = tokenizer.encode("the fox") + [tokenizer.eos_token_id]
    assert "".join(stream(tokenizer, [], ids, skip_special_tokens=True)) == "the fox"
    assert "".join(stream(tokenizer, [], ids, skip_special_tokens=False)) == \
        "the fox" + tokenizer.eos_token


def reference_find_stop(text, new_text_len, stop):
    """Brute force: the earliest start of a stop-string occurrence that ends in the new text."""
    old_end = len(text) - new_text_len
    return min((i for s in stop for i in range(len(text) - len(s) + 1)
                if text[i:i + len(s)] == s and i + len(s) > old_end), default=None)


def reference_holdback(text, stop):
    return max((k for k in range(len(text) + 1) for s in stop if 0 < k < len(s)
                and s.startswith(text[len(text) - k:])), default=0)


def test_stop_strings_match_brute_force_piece_by_piece():
    """Fed a random text in random pieces, StopStrings reports, for the first piece in which a
    stop string ends, the earliest start of one ending there; and it holds back after every
    piece exactly the longest tail that begins a stop string."""
    rng = random.Random()
    for _ in range(3000):
        text = "".join(rng.choice("abc日") for _ in range(rng.randrange(0, 14)))
        stop = ["".join(rng.choice("abc日") for _ in range(rng.randrange(1, 5)))
                for _ in range(rng.randrange(1, 4))]
        matcher, fed = StopStrings(stop), ""
        while len(fed) < len(text):
            piece = text[len(fed):len(fed) + rng.randrange(1, 4)]
            fed += piece
            found = matcher.feed(piece)
            expected = reference_find_stop(fed, len(piece), stop)
            assert (found and found[0]) == expected, (fed, piece, stop, found)
            if found:
                assert fed.startswith(found[1], found[0]), (fed, stop, found)
                break
            assert matcher.holdback == reference_holdback(fed, stop), (fed, stop)


def test_stop_strings_skipped_while_not_reported():
    matcher = StopStrings(["ab"])
    assert matcher.feed("xab", report=False) is None  # before min_tokens: not a stop
    assert matcher.feed("a") is None and matcher.holdback == 1
    assert matcher.feed("bz") == (3, "ab")


def test_stop_string_examples():
    assert StopStrings(["o w"]).feed("hello world") == (4, "o w")
    m = StopStrings(["cd", "abcd"])
    m.feed("xxab")
    assert m.feed("cd") == (2, "abcd")  # the earliest start wins
    m = StopStrings(["of it", "o"])
    assert m.feed("the end ") is None and m.holdback == 0
    assert m.feed("of") == (8, "o")


def test_a_long_stop_string_costs_time_linear_in_the_text():
    """A 300,000-character stop string of one repeated letter, fed the letter one piece at a
    time, was quadratic per step before (each step tried every prefix of the stop string)."""
    import time
    stop = "a" * 300_000
    matcher = StopStrings([stop])
    started = time.perf_counter()
    for _ in range(2000):
        assert matcher.feed("a") is None
    assert matcher.holdback == 2000
    assert time.perf_counter() - started < 1.0  # about 2 ms here; quadratic took minutes


def engine_loop(tokenizer, ids, stop):
    """What the engine does: add each token (the detokenizer looks for stop strings) and show
    the text less the held-back tail. Returns the final text, what was shown, and the length of
    the text after each token (before any cut)."""
    detok = IncrementalDetokenizer(tokenizer, [], True, stop)
    shown, chunk_ends = [], []
    for token in ids:
        detok.add(token)
        chunk_ends.append(detok.stops.length)
        if detok.stop_string is not None:
            return detok.text, shown, chunk_ends
        shown.append(detok.visible_text(finished=False))
    detok.flush()
    return detok.text, shown, chunk_ends


def test_stop_string_split_across_tokens(project_tokenizer):
    tokenizer = project_tokenizer
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text)
    assert not any("x ju" in tokenizer.decode([t]) for t in ids)  # the stop spans two tokens
    final, shown, _ = engine_loop(tokenizer, ids, ["x ju", "never there"])
    assert final == "The quick brown fo"
    assert all(final.startswith(s) for s in shown)  # nothing shown was taken back


def test_stop_strings_in_random_streams(tokenizer):
    rng = random.Random()
    for _ in range(40):
        text = random_text(rng)
        ids = tokenizer.encode(text)
        stop = [text[i:i + rng.randrange(1, 5)] for i in rng.choices(range(len(text)), k=2)]
        final, shown, chunk_ends = engine_loop(tokenizer, ids, stop + ["never there"])
        # Reference: the stream stops at the first chunk that completes an occurrence, and
        # cuts at the earliest start among the occurrences complete by then.
        found = [(i, i + len(s)) for s in stop for i in range(len(text)) if text.startswith(s, i)]
        stop_chunk_end = next(e for e in chunk_ends if e >= min(end for _, end in found))
        assert final == text[:min(i for i, end in found if end <= stop_chunk_end)]
        assert all(final.startswith(s) for s in shown), (text, stop, shown)

