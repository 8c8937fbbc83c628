"""The text tokenizer: exact Unicode round trips, atomic special names, save/load."""

import pytest

from anyseq.tokenizers.text import TextTokenizer
from anyseq.vocab import SPECIALS

CORPUS = [f"a {c} {s} at the {p}" for c in ("red", "green", "blue") for s in ("circle", "square") for p in ("top left", "center")] * 20


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tok(request):
    return TextTokenizer.train(CORPUS, vocab_size=290, model_type=request.param)


@pytest.mark.parametrize(
    "text",
    ["a red circle", "  leading and  double  spaces ", "tabs\tand\nnewlines\r\n", "héllo wörld", "中文 日本語 한국어",
     "emoji 🎉👩‍👩‍👧", "", "<boi> not special <eoi>", "\x00\x7f control", "12345 digits"],
)
def test_arbitrary_unicode_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_names_are_single_pieces(tok):
    for name in SPECIALS:
        ids = tok.encode(name)
        assert len(ids) == 1 and tok.piece(ids[0]) == name


def test_save_load_keeps_ids_and_fingerprint(tok, tmp_path):
    loaded = TextTokenizer.load(tok.save(tmp_path / "t.model"))
    assert loaded.fingerprint == tok.fingerprint and loaded.encode("a blue square") == tok.encode("a blue square")


def test_missing_or_bad_model_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-text-tokenizer"):
        TextTokenizer.load(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        TextTokenizer.load(bad)


def test_train_from_files_and_cli(tmp_path):
    from anyseq.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    assert main(["train-text-tokenizer", "--input", str(corpus), "--output", str(tmp_path / "t.model"), "--vocab-size", "320"]) == 0
    assert TextTokenizer.load(tmp_path / "t.model").vocab_size == 320


def test_too_large_vocab_for_the_corpus_says_how_large_it_can_be():
    with pytest.raises(ValueError, match="vocab_size=5000 is more than this corpus supports"):
        TextTokenizer.train(CORPUS[:5], vocab_size=5000)


def test_too_small_vocab_says_how_many_pieces_are_needed():
    with pytest.raises(ValueError, match="too small"):
        TextTokenizer.train(CORPUS, vocab_size=260)
