"""Token shards: what is written reads back exactly, commits are atomic, bad folders fail clearly."""

import json
import pickle

import numpy as np
import pytest

from anyseq.data.shards import ShardSet, ShardWriter, committed_shards, write_shard_set
from anyseq.sequence import Segment, Serializer
from anyseq.vocab import MODALITIES, TokenSpace, TokenSpaceMismatch

SPACE = TokenSpace(100, {"visual": [16], "audio": [8, 8]}, max_height=4, max_width=4, max_frames=2)
rng = np.random.default_rng(0)


def records(n):
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append([Segment("text", rng.integers(0, 100, 1 + i % 7))])
        elif kind == 1:
            out.append([Segment("text", [1, 2, 3], loss=0.0), Segment("image", rng.integers(0, 16, (2, 3)))])
        else:
            out.append([Segment("audio", rng.integers(0, 8, (3, 2))), Segment("text", [4, 5]),
                        Segment("video", rng.integers(0, 16, (2, 1, 2)))])
    return out


def test_documents_read_back_with_their_metadata(tmp_path):
    recs = records(10)
    write_shard_set(tmp_path / "set", recs, SPACE, per_shard=4)
    shards = ShardSet(tmp_path / "set")
    assert len(shards) == 10 and len(committed_shards(tmp_path / "set")) == 3
    assert shards.space == SPACE
    ser = Serializer(SPACE)
    for i, rec in enumerate(recs):
        want = ser.serialize(rec)
        doc = shards.document(i)
        assert doc.ids.dtype == np.uint32
        assert np.array_equal(doc.ids, want.ids)
        assert np.array_equal(doc.modality, want.modality)
        assert np.array_equal(doc.segment, want.segment)
        assert np.array_equal(doc.loss_weight, want.loss_weight)
        assert shards.line(i) == i + 1
        # a slice reads exactly the same tokens and metadata
        part = shards.document(i, 2, 7)
        assert np.array_equal(part.ids, want.ids[2:7]) and np.array_equal(part.segment, want.segment[2:7])
        assert np.array_equal(part.loss_weight, want.loss_weight[2:7])
        back = ser.parse(doc.ids)
        assert [s.modality for s in back] == [s.modality for s in rec]
    assert list(shards.lengths) == [len(ser.serialize(r)) for r in recs]


def test_meta_counts_tokens_per_modality(tmp_path):
    recs = records(6)
    write_shard_set(tmp_path, recs, SPACE, per_shard=100)
    meta = json.loads((tmp_path / "shard-000000" / "meta.json").read_text())
    ser = Serializer(SPACE)
    counts = np.bincount(np.concatenate([ser.serialize(r).modality for r in recs]), minlength=4)
    assert meta["tokens_per_modality"] == dict(zip(MODALITIES, counts.tolist()))
    assert meta["documents"] == 6 and meta["token_space"]["fingerprint"] == SPACE.fingerprint


def test_uncommitted_temporary_folders_are_invisible(tmp_path):
    write_shard_set(tmp_path, records(3), SPACE)
    (tmp_path / ".tmp-shard-000001.abcd").mkdir()  # what a killed writer leaves behind
    (tmp_path / ".tmp-shard-000001.abcd" / "tokens.bin").write_bytes(b"\0" * 10)
    assert [p.name for p in committed_shards(tmp_path)] == ["shard-000000"]
    assert len(ShardSet(tmp_path)) == 3


def test_a_committed_shard_is_never_overwritten(tmp_path):
    write_shard_set(tmp_path, records(2), SPACE)
    with pytest.raises(FileExistsError, match="already committed"):
        ShardWriter(tmp_path, 0).commit({})


def test_empty_shards_are_allowed(tmp_path):
    recs = records(2)
    write_shard_set(tmp_path, recs, SPACE)
    meta = json.loads((tmp_path / "shard-000000" / "meta.json").read_text())
    # every record of it failed
    ShardWriter(tmp_path, 1).commit({**{k: meta[k] for k in ("token_space", "tokenizers", "source_records")},
                                     "lines": [3, 3]})
    shards = ShardSet(tmp_path)
    assert len(shards) == 2 and len(shards.lengths) == 2
    assert np.array_equal(shards.document(1).ids, Serializer(SPACE).serialize(recs[1]).ids)


def test_missing_folder_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*anyseq tokenize-dataset"):
        ShardSet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no committed token shards.*anyseq tokenize-dataset"):
        ShardSet(tmp_path / "empty")


def test_a_damaged_shard_names_its_file_and_what_to_do(tmp_path):
    write_shard_set(tmp_path, records(6), SPACE, per_shard=3)
    tokens = tmp_path / "shard-000001" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{tokens}: 100 bytes; its meta.json says .* delete its folder and rerun"):
        ShardSet(tmp_path).document(5)
    meta = tmp_path / "shard-000000" / "meta.json"
    meta.write_text('{"format": ')
    with pytest.raises(ValueError, match=f"{meta}: not valid JSON .* delete its folder and rerun"):
        ShardSet(tmp_path)


def test_token_space_mismatch_names_the_folder(tmp_path):
    write_shard_set(tmp_path / "a", records(2), SPACE)
    other = TokenSpace(101, {"visual": [16], "audio": [8, 8]}, max_height=4, max_width=4, max_frames=2)
    write_shard_set(tmp_path / "b", [[Segment("text", [1, 2])]], other)
    with pytest.raises(TokenSpaceMismatch, match=r"shard-000000.*text_vocab_size: expected 100, found 101"):
        ShardSet([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(TokenSpaceMismatch, match=str(tmp_path / "b")):
        ShardSet(tmp_path / "b", space=SPACE)


def test_a_pickled_shard_set_reopens_its_files(tmp_path):
    write_shard_set(tmp_path, records(4), SPACE)
    shards = ShardSet(tmp_path)
    before = shards.document(3).ids
    clone = pickle.loads(pickle.dumps(shards))  # what DataLoader workers receive
    assert len(pickle.dumps(shards)) < 4096  # paths and counts, not token arrays
    assert np.array_equal(clone.document(3).ids, before)
