"""Incremental detokenization and stop strings, checked against full decodes and brute force."""
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from checkpoints import TEXT, make_tokenizer
from minillm.engine.detokenizer import IncrementalDetokenizer, find_stop, stop_holdback

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


def test_find_stop_and_holdback_match_brute_force():
    rng = random.Random()
    for _ in range(3000):
        text = "".join(rng.choice("abc日") for _ in range(rng.randrange(0, 12)))
        stop = ["".join(rng.choice("abc日") for _ in range(rng.randrange(1, 4)))
                for _ in range(rng.randrange(1, 4))]
        new_len = rng.randrange(0, len(text) + 1)
        assert find_stop(text, new_len, stop) == reference_find_stop(text, new_len, stop), \
            (text, new_len, stop)
        assert stop_holdback(text, stop) == reference_holdback(text, stop), (text, stop)


def test_find_stop_examples():
    assert find_stop("hello world", 5, ["o w"]) == 4  # started in the old text, ends in the new
    assert find_stop("hello world", 3, ["o w"]) is None  # wholly in the old text: seen before
    assert find_stop("xxabcd", 1, ["cd", "abcd"]) == 2  # the earliest start wins
    assert stop_holdback("the end of", ["of it", "o"]) == 2
    assert stop_holdback("done", ["###"]) == 0


def engine_loop(tokenizer, ids, stop):
    """What the engine does: add, look for a stop string, show all but the held-back tail."""
    detok = IncrementalDetokenizer(tokenizer, [], True)
    shown, chunk_ends = [], []
    for token in ids:
        new_text = detok.add(token)
        chunk_ends.append(len(detok.text))
        at = find_stop(detok.text, len(new_text), stop)
        if at is not None:
            detok.text = detok.text[:at]
            return detok.text, shown, chunk_ends
        shown.append(detok.text[:len(detok.text) - stop_holdback(detok.text, stop)])
    return detok.text + detok.flush(), shown, chunk_ends


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

