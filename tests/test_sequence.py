"""The grammar: every modality round-trips, and constrained decoding only ever yields parseable ids."""

import random

import numpy as np
import pytest

from anyseq.sequence import GrammarError, Segment, Serializer
from anyseq.vocab import MODALITIES, TokenSpace

SPACE = TokenSpace(200, {"visual": [32], "audio": [8, 8, 8, 8]}, max_height=6, max_width=6, max_frames=3)
rng = np.random.default_rng(0)


def record():
    return [
        Segment("text", [5, 6, 7]),
        Segment("image", rng.integers(0, 32, (3, 5))),
        Segment("video", rng.integers(0, 32, (2, 2, 3))),
        Segment("audio", rng.integers(0, 8, (6, 4))),
        Segment("text", [9], loss=0.0),
    ]


@pytest.mark.parametrize("delay", [False, True])
def test_records_round_trip(delay):
    ser = Serializer(SPACE, audio_delay=delay)
    rec = record()
    out = ser.serialize(rec)
    assert out.ids[0] == SPACE.special("<bos>") and out.ids[-1] == SPACE.special("<eos>")
    back = ser.parse(out.ids)
    assert [s.modality for s in back] == [s.modality for s in rec]
    for a, b in zip(rec, back):
        assert np.array_equal(np.asarray(a.value), np.asarray(b.value))


def test_per_token_metadata_follows_segments():
    out = Serializer(SPACE).serialize(record())
    assert len(out.modality) == len(out.segment) == len(out.loss_weight) == len(out.ids)
    for mod, start, stop in out.spans:
        assert (out.modality[start:stop] == MODALITIES.index(mod)).all()
    last_text = out.spans[-1]
    assert (out.loss_weight[last_text[1] : last_text[2]] == 0).all()
    assert out.segment[0] == -1 and out.segment[-1] == -1


def test_image_layout_is_rows_with_eol():
    grid = np.arange(6).reshape(2, 3)
    ids = Serializer(SPACE).grammar("image").serialize(grid)
    s, eol, code = SPACE, SPACE.special("<eol>"), SPACE.codebook("visual").start
    assert ids == [s.special("<boi>"), s.shape_token("h", 2), s.shape_token("w", 3),
                   code, code + 1, code + 2, eol, code + 3, code + 4, code + 5, eol, s.special("<eoi>")]


def test_delay_pattern_layout():
    codes = np.array([[1, 2], [3, 4]])
    sp = TokenSpace(50, {"audio": [8, 8]})
    ids = Serializer(sp, audio_delay=True).grammar("audio").serialize(codes)
    a0, a1, pad = sp.codebook("audio", 0).start, sp.codebook("audio", 1).start, sp.special("<pad>")
    assert ids[1:-1] == [a0 + 1, pad, a0 + 3, a1 + 2, pad, a1 + 4]


def test_malformed_ids_are_grammar_errors():
    ser = Serializer(SPACE)
    ids = ser.grammar("image").serialize(np.zeros((2, 2), int))
    with pytest.raises(GrammarError, match="<eol>"):
        ser.grammar("image").parse(ids[:5] + ids[6:])
    with pytest.raises(GrammarError):
        ser.grammar("audio").parse(ser.grammar("audio").serialize(np.zeros((2, 4), int))[:-2])


def walk(constraint, seed):
    r = random.Random(seed)
    while not constraint.done:
        lo, hi = r.choice(constraint.allowed())
        constraint.advance(r.randrange(lo, hi))
    return constraint.tokens


@pytest.mark.parametrize("delay", [False, True])
@pytest.mark.parametrize(
    "modality,shape",
    [("image", {}), ("image", {"h": 3, "w": 4}), ("video", {"t": 2}), ("video", {"t": 1, "h": 2, "w": 2}),
     ("audio", {"frames": 5}), ("audio", {"max_frames": 7}), ("audio", {})],
)
def test_random_walks_through_constraints_always_parse(modality, shape, delay):
    g = Serializer(SPACE, audio_delay=delay).grammar(modality)
    for seed in range(25):
        tokens = walk(g.constraint(**shape), seed)
        if shape != {} or modality != "audio":  # free-length audio has no longest form
            assert len(tokens) <= g.length(**shape)
        value = g.parse(tokens)
        if "h" in shape:
            assert value.shape[-2:] == (shape["h"], shape["w"])
        if "frames" in shape:
            assert value.shape == (shape["frames"], 4)
        if "max_frames" in shape:
            assert 1 <= len(value) <= shape["max_frames"]


@pytest.mark.parametrize("delay", [False, True])
@pytest.mark.parametrize("budget", [2, 30, 120, 400])
def test_a_free_continuation_in_any_modality_always_ends_in_budget_and_parses(delay, budget):
    """The model may write text and open any medium; whatever it picks, the record parses."""
    ser = Serializer(SPACE, audio_delay=delay)
    shapes = {"image": {}, "video": {"t": 2}, "audio": {"max_frames": 5}}
    seen = set()
    for seed in range(40):
        tokens = walk(ser.constraint(budget, shapes), seed)
        assert tokens[-1] == SPACE.special("<eos>") and len(tokens) <= budget
        segments = ser.parse(tokens)
        seen.update(seg.modality for seg in segments)
        for seg in segments:
            if seg.modality == "video":
                assert len(seg.value) == 2
            if seg.modality == "audio":
                assert 1 <= len(seg.value) <= 5
    longest = {m: ser.grammar(m).length(**shapes[m]) for m in shapes}
    assert seen == {"text"} | {m for m, n in longest.items() if n < budget}


def test_sampled_image_has_exactly_h_rows_of_w_codes():
    g = Serializer(SPACE).grammar("image")
    c = g.constraint(h=3, w=2)
    tokens = walk(c, 0)
    assert len(tokens) == g.length(3, 2)
    assert g.parse(tokens).shape == (3, 2)


def test_text_constraint_forces_eos_at_the_limit():
    g = Serializer(SPACE).grammar("text")
    c = g.constraint(max_tokens=4)
    for _ in range(4):
        c.advance(1)
    assert c.allowed() == [(SPACE.special("<eos>"), SPACE.special("<eos>") + 1)]
    with pytest.raises(GrammarError):
        c.advance(1)


def test_missing_modality_is_a_clear_error():
    with pytest.raises(KeyError, match="no grammar for 'audio'"):
        Serializer(TokenSpace(10, {"visual": [4]})).grammar("audio")
