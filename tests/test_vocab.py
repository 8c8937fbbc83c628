"""The token space: declarative ranges, saved with a fingerprint, mismatches are errors."""

import numpy as np
import pytest

from anyseq.vocab import SPECIALS, TokenSpace, TokenSpaceMismatch


def space(**kw):
    args = dict(text_vocab_size=300, codebooks={"visual": [64], "audio": [16, 16, 16]}, max_height=8, max_width=8, max_frames=4)
    return TokenSpace(**{**args, **kw})


def test_ranges_are_contiguous_disjoint_and_ordered():
    s = space()
    ranges = list(s.ranges.values())
    assert [r.name for r in ranges] == [
        "text", "special", "shape/h", "shape/w", "shape/t", "visual/0", "audio/0", "audio/1", "audio/2"
    ]
    assert ranges[0].start == 0
    for a, b in zip(ranges, ranges[1:]):
        assert a.stop == b.start
    assert s.num_valid == 300 + len(SPECIALS) + 8 + 8 + 4 + 64 + 48
    assert s.size % 64 == 0 and s.size >= s.num_valid


def test_each_audio_level_has_its_own_ids():
    s = space()
    codes = np.array([[3, 3, 3]])
    ids = s.codes_to_ids("audio", codes, np.arange(3)[None])
    assert len(set(ids.ravel().tolist())) == 3
    assert np.array_equal(s.ids_to_codes("audio", ids, np.arange(3)[None]), codes)


def test_out_of_range_codes_and_shapes_are_clear_errors():
    s = space()
    with pytest.raises(ValueError, match="out of range"):
        s.codes_to_ids("visual", np.array([64]))
    with pytest.raises(ValueError, match="max_height"):
        s.shape_token("h", 9)
    with pytest.raises(KeyError, match="no codebook"):
        s.codebook("depth")


def test_save_load_round_trip_keeps_fingerprint(tmp_path):
    s = space(tokenizers={"text": "abc", "visual": "def"})
    loaded = TokenSpace.load(s.save(tmp_path / "space.json"))
    assert loaded == s and loaded.fingerprint == s.fingerprint and loaded.size == s.size


def test_fingerprint_covers_layout_and_tokenizers():
    base = space()
    assert space(codebooks={"visual": [128]}).fingerprint != base.fingerprint
    assert space(tokenizers={"visual": "other"}).fingerprint != base.fingerprint
    assert space().fingerprint == base.fingerprint


def test_mismatch_names_the_difference():
    with pytest.raises(TokenSpaceMismatch, match="text_vocab_size: expected 300, found 301"):
        space().check_compatible(space(text_vocab_size=301), "shards in /data/x")


def test_for_tokenizers_records_fingerprints():
    class Text:
        vocab_size, fingerprint = 100, "t1"

    class Visual:
        codebook_sizes, fingerprint = [32], "v1"

    s = TokenSpace.for_tokenizers(Text(), visual=Visual(), max_height=4)
    assert s.tokenizers == {"text": "t1", "visual": "v1"} and s.codebooks == {"visual": [32]}


def test_codebook_order_is_part_of_the_identity():
    a = TokenSpace(10, {"visual": [4], "audio": [4]})
    b = TokenSpace(10, {"audio": [4], "visual": [4]})
    assert a.codebook("visual").start != b.codebook("visual").start
    assert a.fingerprint != b.fingerprint


def test_shared_rows_are_the_ranges_that_mean_the_same():
    """What fine-tuning may carry over: same tokenizer and size, specials always, shapes by value."""
    old = TokenSpace(100, {"visual": [64], "audio": [16, 16]}, max_height=8,
                     tokenizers={"text": "t", "visual": "v", "audio": "a"})
    retrained = TokenSpace(100, {"visual": [64], "audio": [16, 32]}, max_height=4,
                           tokenizers={"text": "t2", "visual": "v2", "audio": "a"})
    shared = retrained.shared_rows(old)
    assert sorted(shared) == ["audio/0", "shape/h", "shape/t", "shape/w", "special"]
    assert shared["shape/h"] == (old.ranges["shape/h"].start, retrained.ranges["shape/h"].start, 4)
    assert shared["audio/0"][2] == 16 and shared["special"][:2] == (100, 100)
    assert sorted(old.shared_rows(old)) == sorted(old.ranges)
