"""Packing: rows are the documents' token stream cut into pieces, never attending across
documents; epochs shuffle deterministically; the sampler and the datamodule resume exactly."""

import lightning as L
import numpy as np
import pytest
import torch

from anyseq.data.datamodule import ShardDataModule
from anyseq.data.packing import IGNORE, PackedDataset
from anyseq.data.resumable import Position, ResumableSampler
from anyseq.data.shards import ShardSet, write_shard_set
from anyseq.sequence import Segment
from anyseq.vocab import MODALITIES, TokenSpace

SPACE = TokenSpace(50, {"visual": [16], "audio": [8]}, max_height=4, max_width=4, max_frames=2)
UNCOND = SPACE.special("<uncond>")


def records(n, seed=0, offset=0):
    """Text docs, caption->image docs (caption weight 0.5) and image->caption docs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = Segment("text", rng.integers(offset, offset + 10, 1 + rng.integers(0, 6)), loss=0.5)
        image = Segment("image", rng.integers(0, 16, (1 + i % 2, 2)))
        out.append([[text], [text, image], [image, Segment("text", [7, 8])]][i % 3])
    return out


@pytest.fixture
def shards(tmp_path):
    write_shard_set(tmp_path / "a", records(30), SPACE, per_shard=8)
    return ShardSet(tmp_path / "a")


def reference_stream(shards, order):
    """Per-token arrays of the documents in ``order``, concatenated (the naive packing)."""
    cols = {k: [] for k in ("ids", "modality", "weight", "position", "doc")}
    for j, d in enumerate(order):
        doc = shards.document(int(d))
        cols["ids"].append(doc.ids.astype(np.int64))
        cols["modality"].append(doc.modality)
        cols["weight"].append(doc.loss_weight)
        cols["position"].append(np.arange(len(doc)))
        cols["doc"].append(np.full(len(doc), j))
    return {k: np.concatenate(v) for k, v in cols.items()}


def test_rows_are_the_document_stream_cut_into_rows(shards):
    L_ = 7
    ds = PackedDataset([shards], seq_len=L_, seed=3)
    order = ds.layout(0).docs
    assert sorted(order.tolist()) == list(range(len(shards)))  # every document once per epoch
    ref = reference_stream(shards, order)
    assert len(ds) == (len(ref["ids"]) - 1) // L_
    for r in range(len(ds)):
        row = ds[r]
        assert all(v.shape == (L_,) for v in row.values())
        sl, nxt = slice(r * L_, r * L_ + L_), slice(r * L_ + 1, r * L_ + L_ + 1)
        assert row["input_ids"].tolist() == ref["ids"][sl].tolist()
        assert row["positions"].tolist() == ref["position"][sl].tolist()  # continue across rows
        # document ids: distinct per document within the row, equal inside one
        doc = ref["doc"][sl]
        assert row["document_ids"].tolist() == (doc - doc[0]).tolist()
        same = ref["doc"][sl] == ref["doc"][nxt]
        want = np.where(same & (ref["weight"][nxt] > 0), ref["ids"][nxt], IGNORE)
        assert row["targets"].tolist() == want.tolist()  # never a target in another document
        assert row["modality"].tolist() == ref["modality"][nxt].tolist()
        assert row["loss_weight"].tolist() == np.where(want != IGNORE, ref["weight"][nxt], 0).tolist()


def test_epochs_shuffle_deterministically(shards):
    a, b = PackedDataset([shards], seq_len=5, seed=1), PackedDataset([shards], seq_len=5, seed=1)
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(len(a)))
    assert not np.array_equal(a.layout(0).docs, a.layout(1).docs)
    assert not np.array_equal(a.layout(0).docs, PackedDataset([shards], seq_len=5, seed=2).layout(0).docs)
    later = PackedDataset([shards], seq_len=5, seed=1, epoch=1)
    assert torch.equal(a[len(a) + 4]["input_ids"], later[4]["input_ids"])  # indices run on into the next epoch


def test_weights_mix_sets_by_token_share(tmp_path, shards):
    write_shard_set(tmp_path / "b", records(300, seed=1, offset=20), SPACE, per_shard=100)
    big = ShardSet(tmp_path / "b")
    ds = PackedDataset([shards, big], weights=[1, 1], seq_len=16, seed=0)
    for epoch in range(3):
        lay = ds.layout(epoch)
        lengths = np.diff(lay.offsets)
        small_tokens = lengths[lay.sets == 0].sum()
        total = shards.num_tokens + big.num_tokens
        assert abs(small_tokens - total / 2) <= lengths.max()  # the small set is repeated to half the tokens
        assert lay.offsets[-1] >= len(ds) * 16 + 1
    natural = PackedDataset([shards, big], seq_len=16).layout(0)
    assert (natural.sets == 0).sum() == len(shards) and (natural.sets == 1).sum() == len(big)


def test_condition_dropout_replaces_the_condition_of_media_documents(shards):
    ds = PackedDataset([shards], seq_len=8, seed=0, condition_dropout=1.0)
    plain = PackedDataset([shards], seq_len=8, seed=0)
    ref = reference_stream(shards, ds.layout(0).docs)
    ids = torch.cat([ds[r]["input_ids"] for r in range(len(ds))]).numpy()
    n = len(ids)
    starts = np.flatnonzero(np.diff(ref["doc"][:n], prepend=-1))
    for j, start in enumerate(starts):
        d = int(ds.layout(0).docs[j])
        doc = shards.document(d)
        want = doc.ids.astype(np.int64)
        if MODALITIES[shards.spans(d)[-1]["modality"]] != "text":  # the condition: every earlier segment
            want[(doc.segment >= 0) & (doc.segment < doc.segment.max())] = UNCOND
            assert want[0] == SPACE.special("<bos>") and (want == UNCOND).any()
        got = ids[start : start + len(doc)]
        assert np.array_equal(got, want[: len(got)])
    # dropped tokens carry no loss: their targets are ignored
    row = next(ds[r] for r in range(len(ds)) if (ds[r]["input_ids"] == UNCOND).any())
    assert (row["targets"][:-1][row["input_ids"][1:] == UNCOND] == IGNORE).all()
    # with p = 0.5 about half the media documents drop, the same ones every time for a seed and epoch
    half = PackedDataset([shards], seq_len=8, seed=0, condition_dropout=0.5)
    drops = half.layout(0).drop
    again = PackedDataset([shards], seq_len=8, condition_dropout=0.5).layout(0).drop
    assert 0.2 < drops.mean() < 0.8 and np.array_equal(drops, again)
    dropped = [set(half.layout(e).docs[half.layout(e).drop].tolist()) for e in (0, 1)]
    assert dropped[0] != dropped[1]  # a new draw every epoch
    assert not any((plain[r]["input_ids"] == UNCOND).any() for r in range(len(plain)))


def test_the_sampler_goes_on_from_the_trained_position_across_epochs_and_resumes(shards):
    ds = PackedDataset([shards], seq_len=4, seed=0)
    B, W = 2, 2
    ranks = [ResumableSampler(ds, B, num_replicas=W, rank=r) for r in range(W)]
    full = [list(s) for s in ranks]
    seen = sorted(i for f in full for i in f)
    assert len(set(seen)) == len(seen) and all(0 <= i < len(ds) for i in seen)  # epoch 0, no repeats
    batches = len(ds) // (B * W)
    for r, s in enumerate(ranks):
        assert len(s) == len(full[r]) == batches * B
        s.position.batches, s.position.items["items"] = 3, 3 * B * W
        assert list(s) == full[r][3 * B:]  # an iteration after 3 trained batches reads the rest
        again = ResumableSampler(ds, B, num_replicas=W, rank=r, position=Position(3, {"items": 3 * B * W}))
        assert list(again) == list(s)  # resuming from the position equals going on
        s.position.batches, s.position.items["items"] = batches, batches * B * W  # the loader epoch trained
        epoch_1 = list(s)
        assert len(epoch_1) == len(full[r]) and epoch_1[:2] == [batches * B * W + r, batches * B * W + r + W]
        validation = ResumableSampler(ds, B, num_replicas=W, rank=r)
        assert list(validation) == list(validation) == full[r]  # never advanced: the same batches every time


def test_the_stream_reads_on_across_data_epochs_and_a_short_stream_inside_a_longer_loader_epoch():
    """Images beside fewer videos: the video sampler reads its data epochs on, back to back,
    for as many batches as the image loader has; a batch may straddle two data epochs."""
    s = ResumableSampler(range(5), 2, batches_per_epoch=5)  # 2 whole batches per data epoch
    assert len(s) == 10
    assert list(s) == list(range(10))  # stream indices: data epochs 0 and 1, whole
    s.position.batches, s.position.items["items"] = 5, 10
    assert list(s)[:4] == [10, 11, 12, 13]  # the next loader epoch goes on in data epoch 2


def test_a_run_resumed_on_other_devices_or_batch_size_reads_on_from_the_same_item():
    """The position counts items, not batches (Megatron's consumed samples): 2 batches of
    2 x 2 devices, then batches of 3 on one device, read the stream without a gap or a repeat."""
    position = Position()
    two_devices = [ResumableSampler(range(50), 2, num_replicas=2, rank=r, position=position) for r in range(2)]
    before = sorted(i for s in two_devices for i in list(s)[:2 * 2])
    position.batches, position.items["items"] = 2, 2 * 2 * 2
    after = list(ResumableSampler(range(50), 3, position=position))[:2 * 3]
    assert before + after == list(range(14))


def test_a_checkpoint_reads_on_with_another_batch_size_and_restarts_on_another_data_order(shards, tmp_path):
    """A checkpoint saves how many items of each stream were trained and what fixes their order:
    another batch size reads on from the same item (and says so); another seed, shard list or
    shard folder contents cannot, so the data starts over with a warning."""
    folder = str(tmp_path / "a")
    dm = ShardDataModule(train=[folder], batch_size=4)
    dm.position.batches, dm.position.items["rows"], dm.step_items["rows"] = 7, 28, 4
    state = dm.state_dict()
    bigger = ShardDataModule(train=[folder], batch_size=8)
    bigger.load_state_dict(state)
    assert bigger.position.batches == 7 and bigger.position.items == {"rows": 28}
    sampler = bigger.sampler(range(100), 8, True, "rows")
    assert list(sampler)[:2] == [28, 29]
    other = ShardDataModule(train=[folder], batch_size=4, seed=1)
    with pytest.warns(UserWarning, match="seed.*restarts from its first item"):
        other.load_state_dict(state)
    assert other.position.batches == 0 and other.position.items == {}
    write_shard_set(tmp_path / "more", records(9), SPACE, per_shard=8)  # a shard the folder gained since
    (tmp_path / "more" / "shard-000001").rename(tmp_path / "a" / "shard-000004")
    grown = ShardDataModule(train=[folder], batch_size=4)
    with pytest.warns(UserWarning, match="contents.*restarts from its first item"):
        grown.load_state_dict(state)
    assert grown.position.items == {}


def test_a_shard_set_with_missing_lines_reads_with_a_warning_naming_them(tmp_path):
    write_shard_set(tmp_path / "a", records(30), SPACE, per_shard=8)
    (tmp_path / "a" / "shard-000001").rename(tmp_path / "shard-000001")  # as if its job were still running
    with pytest.warns(UserWarning, match="22 of the source's 30 records.*lines 9..16"):
        assert len(ShardSet(tmp_path / "a")) == 22


class Recorder(L.LightningModule):
    """Tiny model that remembers every batch it trains on."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(SPACE.size, 8)
        self.out = torch.nn.Linear(8, SPACE.size)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        logits = self.out(self.embed(batch["input_ids"]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)

    def validation_step(self, batch, batch_idx):
        self.log("val_docs", batch["document_ids"].float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(path, steps, ckpt_dir=None, resume=None, save=None, reload=0, batch_size=3, **kw):
    module = Recorder()
    dm = ShardDataModule(train=[str(path)], seq_len=16, batch_size=batch_size, num_workers=0, seed=0, **kw)
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, **(save or {"every_n_train_steps": 4, "save_top_k": -1}))
    callbacks = [save] if ckpt_dir else []
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(ckpt_dir), callbacks=callbacks,
                        limit_val_batches=2 if kw.get("val_fraction") else 0, num_sanity_val_steps=0,
                        reload_dataloaders_every_n_epochs=reload)
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    return module.seen, dm


def test_datamodule_trains_and_resumes_exactly_under_lightning(tmp_path, shards):
    path = tmp_path / "a"
    straight, dm = fit(path, 10, ckpt_dir=tmp_path / "ckpt")
    assert dm.token_space() == SPACE and straight[0].shape == (3, 16)
    steps_per_epoch = len(PackedDataset([shards], seq_len=16)) // 3
    assert len(straight) == 10 and 4 < steps_per_epoch < 8  # checkpoints mid epoch 0 and mid epoch 1
    for ckpt in sorted((tmp_path / "ckpt").glob("*.ckpt")):
        done = int(ckpt.stem.split("step=")[1])
        resumed, _ = fit(path, 10, resume=str(ckpt))
        assert len(resumed) == 10 - done
        assert all(torch.equal(a, b) for a, b in zip(resumed, straight[done:])), ckpt.name


@pytest.mark.parametrize("stop", [2, 6, 8], ids=lambda n: f"stopped_at_{n}")
def test_a_run_stopped_by_max_steps_resumes_exactly_and_so_does_its_resumption(tmp_path, shards, stop):
    """The checkpoint a max_steps stop writes (at the end of its unfinished epoch, as the demo's
    transformer saves), stopped mid-epoch or right at an epoch's end; then stopped again after
    the resume and resumed once more: every batch is the unbroken run's."""
    path = tmp_path / "a"
    straight, _ = fit(path, 12)
    steps_per_epoch = len(PackedDataset([shards], seq_len=16)) // 3
    assert steps_per_epoch == 6  # stop 6 ends epoch 0; 8 and 9 lie mid epoch 1
    seen, done = [], 0
    for until in (stop, 9, 12):
        last = tmp_path / f"ckpt_{until}"
        part, _ = fit(path, until, ckpt_dir=last, resume=str(tmp_path / f"ckpt_{done}" / "last.ckpt") if done else None,
                      save={"save_last": True})
        seen += part
        done = until
    assert len(seen) == 12 and all(torch.equal(a, b) for a, b in zip(seen, straight))


def test_a_run_resumed_with_another_batch_size_trains_on_the_rows_the_unbroken_run_would_have(tmp_path, shards):
    """Stopped after 4 batches of 3 rows, resumed with batches of 2: the next 12 rows are the
    unbroken run's next 4 batches, across its epoch's end."""
    path = tmp_path / "a"
    straight, _ = fit(path, 8)
    fit(path, 4, ckpt_dir=tmp_path / "ckpt", save={"save_last": True})
    resumed, _ = fit(path, 10, resume=str(tmp_path / "ckpt" / "last.ckpt"), batch_size=2)
    assert len(resumed) == 6 and resumed[0].shape == (2, 16)
    assert torch.equal(torch.cat(resumed), torch.cat(straight[4:]))


def test_loaders_made_again_every_epoch_go_on_in_the_data(tmp_path, shards):
    straight, _ = fit(tmp_path / "a", 14)
    reloaded, _ = fit(tmp_path / "a", 14, reload=1)
    assert len(reloaded) == 14 and all(torch.equal(a, b) for a, b in zip(reloaded, straight))


def test_val_fraction_holds_out_documents(shards, tmp_path):
    dm = ShardDataModule(train=[str(tmp_path / "a")], seq_len=6, batch_size=2, num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    (train,), (val,) = dm.train_sets, dm.val_sets
    assert len(val) == 6 and len(train) == 24
    assert not set(train.indices) & set(val.indices)
    assert isinstance(dm.val_dataloader(), torch.utils.data.DataLoader)
    assert fit(tmp_path / "a", 2, val_fraction=0.2)[0]


def test_worker_processes_load_the_same_batches(tmp_path, shards):
    def batches(workers):
        dm = ShardDataModule(train=[str(tmp_path / "a")], seq_len=8, batch_size=4, num_workers=workers,
                             condition_dropout=0.3)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        return [b["input_ids"] for b in loader]

    inline, workers = batches(0), batches(2)
    assert len(inline) == len(workers) > 1 and all(torch.equal(a, b) for a, b in zip(inline, workers))


def test_token_space_before_setup_and_mismatched_sets(tmp_path, shards):
    other = TokenSpace(51, {"visual": [16], "audio": [8]}, max_height=4, max_width=4, max_frames=2)
    write_shard_set(tmp_path / "b", [[Segment("text", [1, 2])]], other)
    dm = ShardDataModule(train=[str(tmp_path / "a")], seq_len=6, batch_size=2)
    assert dm.token_space() == SPACE and dm.tokenizers == {}
    from anyseq.vocab import TokenSpaceMismatch

    with pytest.raises(TokenSpaceMismatch, match=str(tmp_path / "b")):
        ShardDataModule(train=[str(tmp_path / "a")], val=[str(tmp_path / "b")], seq_len=6, batch_size=2).token_space()
