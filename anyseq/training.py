"""LightningModule for the unified transformer: next-token loss over every modality.

The model is built in ``configure_model`` once the data's token space is known (its size is
the vocabulary), which also lets FSDP strategies build it sharded. Checkpoints carry the
model config, the token space and the tokenizer references, so ``anyseq generate`` needs
nothing else.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from anyseq.checkpoint import init_from_checkpoint, read_checkpoint, saved_architecture
from anyseq.config import ModelConfig
from anyseq.helpers import exists, out_of_range
from anyseq.kernels import linear_cross_entropy
from anyseq.model import Transformer
from anyseq.parallelize import build, check_activation_checkpointing
from anyseq.resume import ResumesRandomState
from anyseq.strategy import FSDP2Strategy  # noqa: F401  (registers --trainer.strategy=fsdp2)
from anyseq.vocab import MODALITIES, TokenSpace, TokenSpaceMismatch

DEFAULT_PRESET = "tiny"  # the architecture when neither a preset nor init_from names one


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class AnySeqModule(ResumesRandomState, L.LightningModule):
    """Trains :class:`~anyseq.model.Transformer` on packed token shards.

    Args:
        preset: named architecture (``ModelConfig.from_preset``): tiny (the default), small, 100m,
            llama2-7b, ... With ``init_from`` it is only checked against the checkpoint's.
        model_overrides: fields of ModelConfig to change, e.g. ``{n_layers: 4, dropout: 0.1}``.
            ``vocab_size`` always comes from the data's token space.
        init_from: an anyseq checkpoint to fine-tune: its architecture and weights start this run
            (optimizer and schedule start afresh; to continue a run use ``--ckpt_path`` instead).
            The data may add modalities or codebooks: their embedding rows start fresh.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay, of the linear maps' and embeddings' weights only (norms,
            QK-norm's per-head affine included, and biases are never decayed).
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        max_steps: length of the cosine schedule; defaults to ``trainer.max_steps``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        z_loss: coefficient of the z-loss ``log(Z)^2`` that keeps logits from drifting (Chameleon).
        modality_loss_weights: loss weight per target modality, e.g. ``{image: 1.0, text: 0.5}``.
        activation_checkpointing: recompute every n-th block's activations in the backward
            instead of storing them (1: every block, 0: off): about a third more compute for
            most of the activation memory.
        checkpoint_policy: what a checkpointed block recomputes: ``full`` (everything) or
            ``save_matmuls`` (only norms, RoPE, SwiGLU's gate, dropout, adds: the matmul and
            attention outputs are kept; little recompute for about half the memory).
        compile: ``torch.compile`` each transformer block (the Triton kernels are custom ops
            inside the graph).
    """

    def __init__(
        self,
        preset: str | None = None,
        model_overrides: dict[str, Any] | None = None,
        init_from: str | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        z_loss: float = 0.0,
        modality_loss_weights: dict[str, float] | None = None,
        activation_checkpointing: int = 0,
        checkpoint_policy: Literal["full", "save_matmuls"] = "full",
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        # bad settings fail here, by name, rather than as torch's errors at the first step
        if wrong := out_of_range(
            ("lr", lr, lr > 0, "> 0"),
            ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
            ("betas", betas, len(betas) == 2 and all(0 <= beta < 1 for beta in betas), "two numbers in [0, 1)"),
            ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
            ("max_steps", max_steps, max_steps is None or max_steps > 0, "> 0, or null for trainer.max_steps"),
            ("min_lr_ratio", min_lr_ratio, 0 <= min_lr_ratio <= 1, "in [0, 1]"),
            ("z_loss", z_loss, z_loss >= 0, ">= 0"),
        ):
            raise ValueError(f"AnySeqModule: {wrong}")
        unknown = set(modality_loss_weights or {}) - set(MODALITIES)
        if unknown:
            raise ValueError(f"modality_loss_weights has unknown modalities {sorted(unknown)}; use {list(MODALITIES)}")
        ModelConfig.check_fields(model_overrides or {})
        check_activation_checkpointing(activation_checkpointing, checkpoint_policy)
        ModelConfig.from_preset(preset or DEFAULT_PRESET)  # fail at construction on an unknown preset
        self.model: Transformer | None = None
        self.space: TokenSpace | None = None
        self.tokenizers: dict[str, Any] = {}
        weights = [float((modality_loss_weights or {}).get(m, 1.0)) for m in MODALITIES]
        self.register_buffer("modality_weights", torch.tensor(weights), persistent=False)

    # -- model -----------------------------------------------------------------------------
    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def _data_space(self) -> tuple[TokenSpace, dict[str, Any]]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "token_space"):
            raise RuntimeError("AnySeqModule needs a datamodule with token_space() (e.g. anyseq.data.ShardDataModule)")
        return dm.token_space(), dict(getattr(dm, "tokenizers", {}) or {})

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.space is None:
            self.space, self.tokenizers = self._data_space()
        source = self.hparams.init_from
        ckpt = read_checkpoint(source) if source else None

        def load(model: Transformer) -> None:
            ranges = init_from_checkpoint(model, self.space, ckpt, source)
            rank_zero_info(f"init_from {source}: carried the weights and the embedding rows of "
                           f"{', '.join(ranges['carried'])}; fresh rows: {', '.join(ranges['fresh']) or 'none'}")

        sharding, hp = self._sharding(), self.hparams
        config = self._architecture(ckpt).with_vocab(self.space.size)
        self._check_rows_fit(config)
        self.model = build(
            config,
            **sharding,
            activation_checkpointing=hp.activation_checkpointing,
            checkpoint_policy=hp.checkpoint_policy,
            compile=hp.compile,
            load=load if ckpt is not None else None,
        )
        options = []
        if sharding:
            options.append(f"FSDP2 over {sharding['mesh'].size()} processes")
        if hp.activation_checkpointing:
            options.append(f"activation checkpointing ({hp.checkpoint_policy}) every {hp.activation_checkpointing} "
                           "block(s)")
        if hp.compile:
            options.append("torch.compile per block")
        if options:
            rank_zero_info(f"model: {', '.join(options)}")

    def _check_rows_fit(self, config: ModelConfig) -> None:
        """The datamodule's packed rows must fit the model's context: found here, not at the first step."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        rows = getattr(dm, "hparams", {}).get("seq_len")
        if exists(rows) and rows > config.max_seq_len:
            raise ValueError(f"data seq_len={rows} is longer than the model's max_seq_len={config.max_seq_len}: "
                             "lower --data.init_args.seq_len, or raise max_seq_len with "
                             f"--model.init_args.model_overrides='{{max_seq_len: {rows}}}'")

    def _sharding(self) -> dict[str, Any]:
        """FSDP2's mesh, device and compute dtype under a ModelParallelStrategy; nothing otherwise."""
        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FSDPStrategy):
            raise ValueError("strategy 'fsdp' (FSDP1, one flat unit) is not supported: use "
                             "--trainer.strategy=fsdp2 (FSDP2, sharded block by block)")
        if not isinstance(strategy, ModelParallelStrategy):
            return {}
        if self.device_mesh["tensor_parallel"].size() > 1:
            raise ValueError(f"tensor_parallel_size={self.device_mesh['tensor_parallel'].size()}: anyseq shards "
                             "with FSDP2 only; use --trainer.strategy=fsdp2 (data-parallel over every process)")
        mixed = str(self.trainer.precision) == "bf16-mixed"  # gather and compute in bf16, reduce in fp32
        return {"mesh": self.device_mesh["data_parallel"], "device": strategy.root_device,
                "param_dtype": torch.bfloat16 if mixed else None}

    def _architecture(self, ckpt: dict[str, Any] | None) -> ModelConfig:
        """The preset's, or when fine-tuning the checkpoint's (its run options too, such as dropout),
        with ``model_overrides`` applied."""
        overrides = dict(self.hparams.model_overrides or {})
        overrides.pop("vocab_size", None)
        preset = self.hparams.preset
        if ckpt is None:
            return ModelConfig.from_preset(preset or DEFAULT_PRESET, **overrides)
        saved, _ = saved_architecture(ckpt, self.hparams.init_from)
        config = saved.with_overrides(overrides)
        changed = saved.architecture_differences(config)
        if changed:  # e.g. rope_theta for a longer context: allowed, but never silently
            rank_zero_warn(f"init_from {self.hparams.init_from}: model_overrides change what the checkpoint's weights "
                           f"mean (field: (checkpoint's, now) {changed})")
        differ = ModelConfig.from_preset(preset, **overrides).architecture_differences(config) if preset else {}
        if differ:
            raise ValueError(f"init_from {self.hparams.init_from}: preset {preset!r} is not the checkpoint's "
                             f"architecture (field: (preset's, checkpoint's) {differ}); drop preset "
                             "(--model.init_args.preset=null): the architecture comes from the checkpoint")
        return config

    # -- loss -------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        hidden = self.model(batch["input_ids"], batch["document_ids"], batch["positions"])
        targets = batch["targets"].reshape(-1)
        ce, lse = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.model.output.weight, targets)
        modality = batch["modality"].reshape(-1)
        valid = targets != -100
        w = batch["loss_weight"].reshape(-1) * self.modality_weights[modality] * valid
        norm = w.sum().clamp(min=1e-6)
        loss = (w * ce).sum() / norm
        if self.hparams.z_loss:
            loss = loss + self.hparams.z_loss * (w * lse.float() ** 2).sum() / norm
        logs = {"loss": loss.detach()}
        # each modality's mean loss, where it has targets: which ones have is one read of the
        # counts, the step's one device sync (a test and a boolean index per modality made eight)
        targeted = (modality[:, None] == torch.arange(len(MODALITIES), device=modality.device)) & valid[:, None]
        counts, sums = targeted.sum(0), (ce.detach()[:, None] * targeted).sum(0)
        for i, (name, count) in enumerate(zip(MODALITIES, counts.tolist())):
            if count:
                logs[f"loss_{name}"] = sums[i] / count
        logs["tokens"] = valid.sum()
        return loss, logs

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, logs = self.loss(batch)
        tokens = logs.pop("tokens")  # a tensor: Lightning weights by it without reading it back
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=tokens)
        self.log("loss", logs["loss"], prog_bar=True, logger=False)
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        _, logs = self.loss(batch)
        tokens = logs.pop("tokens")
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, prog_bar=True, sync_dist=True, batch_size=tokens)

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        # by module, not by shape: QK-norm's per-head affine is 2-D, and a norm all the same
        matrices = {id(m.weight) for m in self.model.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        decay = [p for p in self.model.parameters() if id(p) in matrices]
        no_decay = [p for p in self.model.parameters() if id(p) not in matrices]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=False)
        total = hp.max_steps or (self.trainer.max_steps if self.trainer.max_steps > 0 else 10_000)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints carry everything generation needs ------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["anyseq"] = {
            "model_config": self.config.to_dict(),
            "token_space": self.space.to_dict(),
            "tokenizers": self.tokenizers,
        }
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("anyseq")
        if meta is None:
            raise ValueError("this checkpoint was not written by anyseq's AnySeqModule (no 'anyseq' section)")
        saved = TokenSpace.from_dict(meta["token_space"])
        if self._trainer is not None and getattr(self.trainer, "datamodule", None) is not None:
            data_space, _ = self._data_space()
            if saved != data_space:
                raise TokenSpaceMismatch(
                    f"checkpoint token space {saved.fingerprint} differs from the training shards' "
                    f"{data_space.fingerprint}; resume with the shards it was trained on"
                )
        self.space, self.tokenizers = saved, meta["tokenizers"]
        self.configure_model()
        super().on_load_checkpoint(checkpoint)
