"""The sequence grammar: how each modality's codes become token ids, and back.

One grammar per modality, each able to (a) serialize a segment's value to ids, (b) parse
ids back to the value, and (c) drive constrained decoding through a small state machine
that answers "which ids may come next". Formats (ids from :class:`~anyseq.vocab.TokenSpace`)::

    text   sentencepiece ids
    image  <boi> <h=H> <w=W> (code x W <eol>) x H <eoi>
    video  <bov> <t=T> <h=H> <w=W> ((code x W <eol>) x H <eof>) x T <eov>
    audio  <boa> (c_0 c_1 ... c_{K-1}) x F <eoa>     level k in its own id range
           delay pattern (MusicGen): step s holds level k of frame s-k, <pad> where none

A record is a list of segments; :meth:`Serializer.serialize` turns it into
``<bos> seg ... seg <eos>`` with per-token modality, segment index and loss weight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from anyseq.vocab import MODALITIES, TokenSpace

Ranges = list[tuple[int, int]]  # half-open [lo, hi) id ranges


class GrammarError(ValueError):
    """Ids that do not follow a modality's grammar."""


# ---------------------------------------------------------------------------------------------
# constrained decoding: a per-sample state machine over token ids
# ---------------------------------------------------------------------------------------------
class Constraint:
    """Yields the allowed ids one step at a time. Built from a generator of allowed sets.

    The generator yields the allowed ranges for the next token and receives the chosen id.
    That lets every grammar write its format once, as straight-line code.
    """

    def __init__(self, program: Callable[[], Any]):
        self._gen = program()
        self._allowed: Ranges | None = next(self._gen)
        self.tokens: list[int] = []

    @property
    def done(self) -> bool:
        return self._allowed is None

    def allowed(self) -> Ranges:
        if self._allowed is None:
            raise GrammarError("the constrained segment is already complete")
        return self._allowed

    def advance(self, token: int) -> None:
        token = int(token)
        if not any(lo <= token < hi for lo, hi in self.allowed()):
            raise GrammarError(f"id {token} is not allowed here; allowed ranges {self._allowed}")
        self.tokens.append(token)
        try:
            self._allowed = self._gen.send(token)
        except StopIteration:
            self._allowed = None


def one(token: int) -> Ranges:
    return [(token, token + 1)]


# ---------------------------------------------------------------------------------------------
# grammars
# ---------------------------------------------------------------------------------------------
class Grammar(ABC):
    modality: str

    def __init__(self, space: TokenSpace):
        self.space = space

    @abstractmethod
    def serialize(self, value: Any) -> list[int]: ...

    @abstractmethod
    def parse(self, ids: Sequence[int]) -> Any: ...

    @abstractmethod
    def constraint(self, **shape: Any) -> Constraint:
        """State machine for one whole segment (begin marker to end marker)."""

    def length(self, **shape: Any) -> int:
        """The most ids a segment of ``constraint(**shape)`` can take (free sizes at their maximum)."""
        raise NotImplementedError

    def split(self, ids: Sequence[int], start: int) -> int:
        """Index just past the segment that begins at ``ids[start]`` (for parsing records)."""
        raise NotImplementedError


class TextGrammar(Grammar):
    """Text is sentencepiece ids; it ends where the next segment's marker or <eos> begins."""

    modality = "text"

    def serialize(self, value: Sequence[int]) -> list[int]:
        ids = [int(t) for t in value]
        bad = [t for t in ids if not self.space.is_text(t)]
        if bad:
            raise GrammarError(f"text segment holds non-text ids {bad[:5]} (text ids are < {self.space.text_vocab_size})")
        return ids

    def parse(self, ids: Sequence[int]) -> list[int]:
        return self.serialize(ids)

    def constraint(self, max_tokens: int | None = None, stop: int | None = None) -> Constraint:
        """Free text until ``stop`` (default <eos>) is chosen or ``max_tokens`` forces it."""
        text = self.space.ranges["text"]
        stop = self.space.special("<eos>") if stop is None else stop

        def program():
            n = 0
            while max_tokens is None or n < max_tokens:
                token = yield [(text.start, text.stop), (stop, stop + 1)]
                if token == stop:
                    return
                n += 1
            yield one(stop)

        return Constraint(program)

    def split(self, ids: Sequence[int], start: int) -> int:
        end = start
        while end < len(ids) and self.space.is_text(ids[end]):
            end += 1
        return end


class _GridGrammar(Grammar):
    """Shared machinery of image and video: rows of codes closed by <eol>."""

    codebook = "visual"

    def _shape(self, axis: str, token: int) -> int:
        value = self.space.shape_value(axis, token)
        if value is None:
            raise GrammarError(f"expected a <{axis}=N> shape token, found id {token}")
        return value

    def _rows(self, grid: np.ndarray) -> list[int]:
        codes = self.space.codes_to_ids(self.codebook, grid)
        eol = self.space.special("<eol>")
        out: list[int] = []
        for row in codes:
            out.extend(int(c) for c in row)
            out.append(eol)
        return out

    def _shape_program(self, axis: str, value: int | None):
        """Yield a shape token (forced if ``value`` is given); return the chosen value."""
        r = self.space.ranges[f"shape/{axis}"]
        token = yield (one(self.space.shape_token(axis, value)) if value else [(r.start, r.stop)])
        return self.space.shape_value(axis, token)

    def _grid_program(self, h: int, w: int):
        code = self.space.codebook(self.codebook)
        eol = self.space.special("<eol>")
        for _ in range(h):
            for _ in range(w):
                yield [(code.start, code.stop)]
            yield one(eol)

    def _parse_rows(self, ids: Sequence[int], pos: int, h: int, w: int) -> tuple[np.ndarray, int]:
        eol = self.space.special("<eol>")
        rows = []
        for r in range(h):
            row = list(ids[pos : pos + w])
            if len(row) < w or pos + w >= len(ids) or ids[pos + w] != eol:
                raise GrammarError(f"row {r}: expected {w} codes then <eol> at position {pos}")
            rows.append(self.space.ids_to_codes(self.codebook, np.array(row)))
            pos += w + 1
        return np.stack(rows) if rows else np.zeros((0, w), np.int64), pos

    def _expect(self, ids: Sequence[int], pos: int, name: str) -> int:
        if pos >= len(ids) or ids[pos] != self.space.special(name):
            found = ids[pos] if pos < len(ids) else "end of sequence"
            raise GrammarError(f"expected {name} at position {pos}, found {found}")
        return pos + 1

    def split(self, ids: Sequence[int], start: int) -> int:
        end_marker = self.space.special(self.end)
        for i in range(start, len(ids)):
            if ids[i] == end_marker:
                return i + 1
        raise GrammarError(f"{self.modality} segment starting at {start} has no {self.end}")


class ImageGrammar(_GridGrammar):
    modality = "image"
    begin, end = "<boi>", "<eoi>"

    def serialize(self, value: np.ndarray) -> list[int]:
        grid = np.asarray(value)
        if grid.ndim != 2:
            raise GrammarError(f"image codes must be (h, w), got shape {grid.shape}")
        h, w = grid.shape
        s = self.space
        return [s.special("<boi>"), s.shape_token("h", h), s.shape_token("w", w), *self._rows(grid), s.special("<eoi>")]

    def parse(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(t) for t in ids]
        pos = self._expect(ids, 0, "<boi>")
        if len(ids) < 3:
            raise GrammarError("image segment too short for its shape tokens")
        h, w = self._shape("h", ids[pos]), self._shape("w", ids[pos + 1])
        grid, pos = self._parse_rows(ids, pos + 2, h, w)
        pos = self._expect(ids, pos, "<eoi>")
        if pos != len(ids):
            raise GrammarError(f"{len(ids) - pos} ids after <eoi>")
        return grid

    def constraint(self, h: int | None = None, w: int | None = None) -> Constraint:
        s = self.space

        def program():
            yield one(s.special("<boi>"))
            hh = yield from self._shape_program("h", h)
            ww = yield from self._shape_program("w", w)
            yield from self._grid_program(hh, ww)
            yield one(s.special("<eoi>"))

        return Constraint(program)

    def length(self, h: int | None = None, w: int | None = None) -> int:
        h, w = h or self.space.max_shape["h"], w or self.space.max_shape["w"]
        return 3 + h * (w + 1) + 1


class VideoGrammar(_GridGrammar):
    modality = "video"
    begin, end = "<bov>", "<eov>"

    def serialize(self, value: np.ndarray) -> list[int]:
        grid = np.asarray(value)
        if grid.ndim != 3:
            raise GrammarError(f"video codes must be (t, h, w), got shape {grid.shape}")
        t, h, w = grid.shape
        s = self.space
        out = [s.special("<bov>"), s.shape_token("t", t), s.shape_token("h", h), s.shape_token("w", w)]
        for frame in grid:
            out.extend(self._rows(frame))
            out.append(s.special("<eof>"))
        out.append(s.special("<eov>"))
        return out

    def parse(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(t) for t in ids]
        pos = self._expect(ids, 0, "<bov>")
        if len(ids) < 4:
            raise GrammarError("video segment too short for its shape tokens")
        t, h, w = (self._shape(a, ids[pos + i]) for i, a in enumerate("thw"))
        pos += 3
        frames = []
        for _ in range(t):
            grid, pos = self._parse_rows(ids, pos, h, w)
            pos = self._expect(ids, pos, "<eof>")
            frames.append(grid)
        pos = self._expect(ids, pos, "<eov>")
        if pos != len(ids):
            raise GrammarError(f"{len(ids) - pos} ids after <eov>")
        return np.stack(frames)

    def constraint(self, t: int | None = None, h: int | None = None, w: int | None = None) -> Constraint:
        s = self.space

        def program():
            yield one(s.special("<bov>"))
            tt = yield from self._shape_program("t", t)
            hh = yield from self._shape_program("h", h)
            ww = yield from self._shape_program("w", w)
            for _ in range(tt):
                yield from self._grid_program(hh, ww)
                yield one(s.special("<eof>"))
            yield one(s.special("<eov>"))

        return Constraint(program)

    def length(self, t: int | None = None, h: int | None = None, w: int | None = None) -> int:
        t, h, w = (v or self.space.max_shape[a] for v, a in ((t, "t"), (h, "h"), (w, "w")))
        return 4 + t * (h * (w + 1) + 1) + 1


class AudioGrammar(Grammar):
    """``<boa> frames <eoa>``; ``delay=True`` uses MusicGen's delay pattern."""

    modality = "audio"
    codebook = "audio"
    begin, end = "<boa>", "<eoa>"

    def __init__(self, space: TokenSpace, delay: bool = False):
        super().__init__(space)
        self.delay = delay
        self.levels = space.num_levels(self.codebook)

    def _steps(self, frames: int) -> list[list[int | None]]:
        """Which frame each (step, level) slot holds; None is a <pad> slot."""
        k = self.levels
        if not self.delay:
            return [[f] * k for f in range(frames)]
        steps = frames + k - 1 if frames else 0
        return [[s - lv if 0 <= s - lv < frames else None for lv in range(k)] for s in range(steps)]

    def serialize(self, value: np.ndarray) -> list[int]:
        codes = np.asarray(value)
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise GrammarError(f"audio codes must be (frames, {self.levels}), got shape {codes.shape}")
        ids = self.space.codes_to_ids(self.codebook, codes, np.arange(self.levels)[None, :])
        pad = self.space.special("<pad>")
        out = [self.space.special("<boa>")]
        for step in self._steps(len(codes)):
            out.extend(pad if f is None else int(ids[f, lv]) for lv, f in enumerate(step))
        out.append(self.space.special("<eoa>"))
        return out

    def parse(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(t) for t in ids]
        s, k = self.space, self.levels
        if not ids or ids[0] != s.special("<boa>") or ids[-1] != s.special("<eoa>"):
            raise GrammarError("audio segment must start with <boa> and end with <eoa>")
        body = ids[1:-1]
        if len(body) % k:
            raise GrammarError(f"audio body of {len(body)} ids is not whole frames of {k} levels")
        steps = len(body) // k
        frames = max(steps - (k - 1), 0) if self.delay else steps
        codes = np.zeros((frames, k), np.int64)
        pad = s.special("<pad>")
        for i, step in enumerate(self._steps(frames)):
            for lv, f in enumerate(step):
                token = body[i * k + lv]
                if f is None:
                    if token != pad:
                        raise GrammarError(f"delay pattern: expected <pad> at step {i} level {lv}")
                    continue
                codes[f, lv] = s.ids_to_codes(self.codebook, np.array(token), lv)
        return codes

    def constraint(self, frames: int | None = None, max_frames: int | None = None) -> Constraint:
        """Exactly ``frames`` frames, or a free length (1..``max_frames``) that the sampler ends.

        The sampler ends free-length audio at a level-0 slot: with <eoa> in the plain layout,
        with <pad> in the delay pattern (whose delayed levels are then drained).
        """
        s, k = self.space, self.levels
        code = [[(r.start, r.stop)] for r in (s.codebook(self.codebook, lv) for lv in range(k))]
        pad, eoa = s.special("<pad>"), s.special("<eoa>")
        stop = pad if self.delay else eoa

        def program():
            yield one(s.special("<boa>"))
            n, step = frames, 0  # n: number of frames, once known
            while n is None or step < (n + k - 1 if self.delay else n):
                for lv in range(k):
                    f = step - lv if self.delay else step
                    if lv == 0 and n is None:
                        full = max_frames is not None and step >= max_frames
                        token = yield ([] if full else code[0]) + (one(stop) if step > 0 else [])
                        if token == stop:
                            n = step
                            if not self.delay:
                                return  # <eoa> was just emitted
                        continue
                    yield code[lv] if 0 <= f and (n is None or f < n) else one(pad)
                step += 1
            yield one(eoa)

        return Constraint(program)

    def length(self, frames: int | None = None, max_frames: int | None = None) -> int:
        n = frames or max_frames
        if n is None:
            raise ValueError("free-length audio has no longest form: give frames or max_frames")
        return 2 + (n + (self.levels - 1) * self.delay) * self.levels

    def split(self, ids: Sequence[int], start: int) -> int:
        eoa = self.space.special("<eoa>")
        for i in range(start, len(ids)):
            if ids[i] == eoa:
                return i + 1
        raise GrammarError(f"audio segment starting at {start} has no <eoa>")


# ---------------------------------------------------------------------------------------------
# records: lists of segments <-> one token sequence with per-token metadata
# ---------------------------------------------------------------------------------------------
@dataclass
class Segment:
    """One piece of a record: ``modality`` in MODALITIES; ``value`` is text ids or media codes.

    ``loss`` scales this segment's tokens in the training loss (0 excludes, e.g., a prompt).
    """

    modality: str
    value: Any
    loss: float = 1.0


@dataclass
class Serialized:
    ids: np.ndarray  # int64 (L,)
    modality: np.ndarray  # uint8 (L,), index into MODALITIES
    segment: np.ndarray  # int16 (L,), segment index; -1 for <bos>/<eos>
    loss_weight: np.ndarray  # float32 (L,)
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # (modality, start, stop)

    def __len__(self) -> int:
        return len(self.ids)


class Serializer:
    """Turns records (lists of :class:`Segment`) into token sequences and back."""

    def __init__(self, space: TokenSpace, audio_delay: bool = False):
        self.space = space
        self.grammars: dict[str, Grammar] = {"text": TextGrammar(space)}
        if space.num_levels("visual"):
            self.grammars["image"] = ImageGrammar(space)
            self.grammars["video"] = VideoGrammar(space)
        if space.num_levels("audio"):
            self.grammars["audio"] = AudioGrammar(space, delay=audio_delay)
        self._begin = {space.special(g.begin): g for g in self.grammars.values() if hasattr(g, "begin")}

    def grammar(self, modality: str) -> Grammar:
        if modality not in self.grammars:
            raise KeyError(
                f"the token space has no grammar for {modality!r} (available: {sorted(self.grammars)}); "
                "build it with a tokenizer for that modality"
            )
        return self.grammars[modality]

    def serialize(self, segments: Sequence[Segment], bos: bool = True, eos: bool = True) -> Serialized:
        ids: list[int] = []
        modality: list[int] = []
        seg_index: list[int] = []
        weight: list[float] = []
        spans = []

        def emit(tokens: list[int], mod: str, index: int, w: float) -> None:
            spans.append((mod, len(ids), len(ids) + len(tokens)))
            ids.extend(tokens)
            modality.extend([MODALITIES.index(mod)] * len(tokens))
            seg_index.extend([index] * len(tokens))
            weight.extend([w] * len(tokens))

        if bos:
            emit([self.space.special("<bos>")], "text", -1, 1.0)
            spans.pop()
        for i, seg in enumerate(segments):
            emit(self.grammar(seg.modality).serialize(seg.value), seg.modality, i, float(seg.loss))
        if eos:
            emit([self.space.special("<eos>")], "text", -1, 1.0)
            spans.pop()
        return Serialized(
            np.asarray(ids, np.int64),
            np.asarray(modality, np.uint8),
            np.asarray(seg_index, np.int16),
            np.asarray(weight, np.float32),
            spans,
        )

    def constraint(self, max_tokens: int, shapes: dict[str, dict[str, Any]] | None = None) -> Constraint:
        """The rest of a record, in any modality the model chooses (Chameleon's mixed-modal output).

        Text, and any media segment the model opens with its begin marker (then that grammar's
        constraint with ``shapes[modality]``), until <eos>. A medium may begin only while its
        longest form still fits in ``max_tokens``, so every sample ends with <eos> and parses.
        """
        s, shapes = self.space, shapes or {}
        text, eos = s.ranges["text"], s.special("<eos>")
        media = self._begin  # begin marker -> grammar
        longest = {b: g.length(**shapes.get(g.modality, {})) for b, g in media.items()}

        def program():
            left = max_tokens
            while left > 1:
                opens = [(b, b + 1) for b in media if longest[b] < left]
                token = yield [(text.start, text.stop), *opens, (eos, eos + 1)]
                left -= 1
                if token == eos:
                    return
                if token in media:
                    segment = media[token].constraint(**shapes.get(media[token].modality, {}))
                    segment.advance(token)
                    while not segment.done:
                        segment.advance((yield segment.allowed()))
                        left -= 1
            yield one(eos)

        return Constraint(program)

    def parse(self, ids: Sequence[int]) -> list[Segment]:
        """Split a sequence into segments (dropping <bos>/<eos>); each parses with its grammar."""
        ids = [int(t) for t in ids]
        s = self.space
        pos, end = 0, len(ids)
        if pos < end and ids[pos] == s.special("<bos>"):
            pos += 1
        if end > pos and ids[end - 1] == s.special("<eos>"):
            end -= 1
        body = ids[:end]
        segments = []
        while pos < end:
            grammar = self._begin.get(body[pos])
            if grammar is None:
                if not s.is_text(body[pos]):
                    raise GrammarError(f"id {body[pos]} at position {pos} starts no segment")
                grammar = self.grammars["text"]
            stop = grammar.split(body, pos)
            segments.append(Segment(grammar.modality, grammar.parse(body[pos:stop])))
            pos = stop
        return segments
