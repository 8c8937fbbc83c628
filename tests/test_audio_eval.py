"""Evaluation and benchmark of the audio tokenizer: the metrics a folder gets, the Opus
reference, the ``anyseq eval-tokenizer`` entry and the benchmark script."""

import json

import numpy as np
import pytest
import torch

from anyseq import media
from anyseq.cli import main as anyseq
from anyseq.tokenizers import audio_benchmark, audio_eval
from anyseq.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from anyseq.tokenizers.audio_synth import write_corpus
from anyseq.tokenizers.quantizer import QuantizerConfig

SR = 16000


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    q = QuantizerConfig(kind="fsq", levels=[4, 4, 4], num_quantizers=2, quantizer_dropout=True)
    tok = AudioTokenizer(AudioTokenizerConfig(channels=4, max_channels=32, latent_dim=16, dilations=[1], quantizer=q))
    return tok.save(tmp_path_factory.mktemp("tok") / "audio")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_corpus(folder, 3, 0.5, SR, seed=0)
    media.write_audio(folder / "long_at_8k.wav", np.sin(np.arange(8000 * 3) * 0.2).astype(np.float32) * 0.3, 8000)
    (folder / "broken.wav").write_text("not audio")
    return folder


def test_evaluate_folder_reports_every_metric_and_writes_examples(tokenizer_dir, clips, tmp_path):
    tok = AudioTokenizer.load(tokenizer_dir)
    m = audio_eval.evaluate_folder(tok, clips, tmp_path, examples=2, chunk_seconds=1.0)  # the 3 s file goes in chunks
    assert m["files"] == 4 and m["seconds"] == pytest.approx(4.5)
    assert list(m["skipped"]) == [str(clips / "broken.wav")]  # reported, not fatal
    assert m["kbps"] == pytest.approx(tok.bitrate_kbps()) == pytest.approx(2 * 50 * 6 / 1000)
    assert [r["levels"] for r in m["by_levels"]] == [1, 2]
    assert m["by_levels"][-1]["si_sdr"] == m["si_sdr"]
    for key in ("si_sdr", "mel_distance", "stft_distance", "rtf_encode", "rtf_decode"):
        assert np.isfinite(m[key])
    assert len(m["codebook"]) == 2 and all(0 < c["usage"] <= 1 and c["perplexity"] >= 1 for c in m["codebook"])
    assert "opus" in m and ("skipped" in m["opus"] or m["opus"]["kbps"] > 0)
    assert json.loads((tmp_path / "metrics.json").read_text())["files"] == 4
    examples = sorted(p.name for p in (tmp_path / "examples").iterdir())
    assert sum(n.endswith("_original.wav") for n in examples) == 2
    assert sum(n.endswith("_recon.wav") for n in examples) == 2
    original = next((tmp_path / "examples").glob("00_*_original.wav"))
    recon = original.with_name(original.name.replace("_original", "_recon"))
    assert media.audio_info(original) == media.audio_info(recon)


def test_opus_reference_round_trip_is_aligned_and_reports_its_bitrate():
    if audio_eval.opus_encoder() is None:
        pytest.skip("this PyAV build has no Opus encoder")
    t = np.arange(SR) / SR
    x = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y, kbps = audio_eval.opus_roundtrip(x, SR, 24.0)
    assert y.shape == x.shape
    assert 12 < kbps < 48
    assert audio_eval.si_sdr(torch.from_numpy(y)[None], torch.from_numpy(x)[None]).item() > 10
    with pytest.raises(ValueError, match="Opus encodes"):
        audio_eval.opus_roundtrip(x, 22050, 24.0)


def test_anyseq_eval_tokenizer_runs_the_audio_evaluator(tokenizer_dir, clips, tmp_path, capsys):
    rc = anyseq(["eval-tokenizer", "--tokenizer", str(tokenizer_dir), "--data", str(clips), "--out", str(tmp_path), "--limit", "2", "--no-opus"])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["files"] == 2 and m["opus"] == {"skipped": "disabled"}
    assert "levels" in capsys.readouterr().out
    rc = anyseq(["eval-tokenizer", "--tokenizer", str(tokenizer_dir), "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert rc == 2 and "nope: audio source not found" in capsys.readouterr().err


def test_benchmark_reports_real_time_factors(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = audio_benchmark.main(["--tokenizer", str(tokenizer_dir), "--seconds", "2", "--clips", "4", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["workload"] for r in rows] == ["1 x 2 s", "4 x 1 s"]
    assert all(r["rtf_encode"] > 0 and r["rtf_decode"] > 0 for r in rows)
    assert "RTF encode" in capsys.readouterr().out
