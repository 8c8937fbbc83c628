"""LightningModule that trains the visual tokenizer: ``anyseq fit --config configs/tokenizer/visual_*.yaml``.

Generator loss = pixel reconstruction (L1/L2) + quantizer aux loss + optional perceptual
loss + (after ``disc_start``) adaptively weighted hinge GAN loss; the PatchGAN
discriminators (2D for images, 3D for clips) train with their own optimizer. Manual
optimization: one generator step and one discriminator step per batch, and
``trainer.global_step`` counts batches (generator steps), so ``max_steps`` and
``disc_start`` mean what they say.

The tokenizer is built in ``configure_model``, after the process group exists, so a VQ
codebook is created with distributed sync under DDP.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from anyseq.resume import ResumesRandomState
from anyseq.tokenizers.base import fine_tuning_config, load_for_fine_tuning
from anyseq.tokenizers.visual import VisualTokenizer, VisualTokenizerConfig
from anyseq.tokenizers.visual_losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    load_feature_net,
)


def exists(x) -> bool:
    return x is not None


def default(x, d):
    return x if exists(x) else d


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample PSNR (dB) of [-1, 1] tensors, on the uint8 scale (peak 255)."""
    mse = ((x.float() - y.float()) * 127.5).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then constant (``total <= 0``) or a cosine to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= 0:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class VisualTokenizerModule(ResumesRandomState, L.LightningModule):
    """Trains :class:`~anyseq.tokenizers.visual.VisualTokenizer`.

    Args:
        tokenizer: architecture and codebook (``VisualTokenizerConfig``; nested ``quantizer``).
        lr: generator AdamW learning rate (constant after warmup).
        disc_lr: discriminator learning rate (defaults to ``lr``).
        betas: AdamW betas of both optimizers (GAN practice: (0.5, 0.9)).
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warmup of both optimizers.
        cosine_decay: after warmup, decay both learning rates along a cosine to
            ``min_lr_ratio`` at ``trainer.max_steps`` (default: constant, as in LlamaGen).
        min_lr_ratio: final learning rate of the cosine, as a fraction of the peak.
        reconstruction: pixel loss, ``l1`` or ``l2``.
        quantizer_weight: weight of the quantizer's commitment / entropy loss.
        perceptual_net: TorchScript feature network on disk (see ``visual_losses``); when the
            file is missing the perceptual loss is off (with a warning).
        perceptual_weight: weight of the perceptual loss.
        disc_start: generator step at which the GAN losses switch on (LlamaGen: 20000).
        disc_weight: GAN loss weight (times the adaptive weight when ``adaptive_disc_weight``).
        adaptive_disc_weight: scale the GAN gradient at the decoder's last layer to the
            reconstruction gradient's size (taming-transformers).
        disc_channels: width of the discriminators' first layer.
        disc_layers: strided layers of the discriminators.
        grad_clip: gradient norm clipping of both optimizers (None: off).
        export_dir: where ``tokenizer.save`` writes the trained tokenizer at the end of fit.
        init_from: a saved tokenizer folder to fine-tune: architecture and weights from there
            (``tokenizer`` may be null, or must match it), fresh optimizers, schedule and
            discriminators. ``--ckpt_path`` instead continues an interrupted run.
    """

    def __init__(
        self,
        tokenizer: VisualTokenizerConfig | None = None,
        lr: float = 1e-4,
        disc_lr: float | None = None,
        betas: tuple[float, float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        cosine_decay: bool = False,
        min_lr_ratio: float = 0.1,
        reconstruction: Literal["l1", "l2"] = "l1",
        quantizer_weight: float = 1.0,
        perceptual_net: str | None = None,
        perceptual_weight: float = 1.0,
        disc_start: int = 20000,
        disc_weight: float = 0.5,
        adaptive_disc_weight: bool = True,
        disc_channels: int = 64,
        disc_layers: int = 3,
        grad_clip: float | None = 1.0,
        export_dir: str | None = None,
        init_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"VisualTokenizerModule.reconstruction must be 'l1' or 'l2', got {reconstruction!r}")
        self.automatic_optimization = False
        if exists(init_from):
            self.config = fine_tuning_config(init_from, VisualTokenizer, tokenizer)
        else:
            self.config = default(tokenizer, VisualTokenizerConfig())
        self.tokenizer: VisualTokenizer | None = None
        self.discriminators: nn.ModuleDict | None = None
        net = load_feature_net(perceptual_net, "perceptual loss")
        # held in a tuple: a frozen pretrained network is not part of this module's checkpoint
        self._perceptual = (PerceptualLoss(net),) if exists(net) else ()
        self.skipped: dict[str, str] = {}
        self._val: dict[str, Any] = {}

    # -- building ------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if exists(self.tokenizer):
            return
        h = self.hparams
        self.tokenizer = load_for_fine_tuning(h.init_from, self.config) if exists(h.init_from) else VisualTokenizer(self.config)
        self.discriminators = nn.ModuleDict(
            {kind: PatchDiscriminator(dims, h.disc_channels, h.disc_layers) for kind, dims in (("image", 2), ("video", 3))}
        )

    def configure_optimizers(self):
        h = self.hparams
        opt_g = torch.optim.AdamW(self.tokenizer.parameters(), lr=h.lr, betas=h.betas, weight_decay=h.weight_decay)
        opt_d = torch.optim.AdamW(
            self.discriminators.parameters(), lr=default(h.disc_lr, h.lr), betas=h.betas, weight_decay=h.weight_decay
        )
        total = self.trainer.max_steps if h.cosine_decay and self._trainer is not None else -1
        if h.cosine_decay and total <= 0:
            raise ValueError("VisualTokenizerModule(cosine_decay=True) needs trainer.max_steps to know where the cosine ends")
        # the discriminator's schedule counts its own steps, which begin at disc_start
        schedules = [
            functools.partial(lr_multiplier, warmup=h.warmup_steps, total=t, min_ratio=h.min_lr_ratio)
            for t in (total, total - h.disc_start if total > 0 else -1)
        ]
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, fn) for opt, fn in zip((opt_g, opt_d), schedules)]
        return [opt_g, opt_d], schedulers

    def on_fit_start(self) -> None:
        for loss in self._perceptual:
            loss.to(self.device)

    # -- losses -------------------------------------------------------------------------------------
    def _pixel_loss(self, recon: Tensor, target: Tensor) -> Tensor:
        fn = F.l1_loss if self.hparams.reconstruction == "l1" else F.mse_loss
        return fn(recon.float(), target.float())

    def _generator_loss(self, kind: str, x: Tensor, gan: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Loss of one kind's batch, its (detached) reconstruction, and logs."""
        h = self.hparams
        out = self.tokenizer(x)
        target = x if kind == "image" else x[:, :, : out.recon.shape[2]]  # clips are cut to 1 + ft k frames
        rec = self._pixel_loss(out.recon, target)
        logs = {"rec": rec.detach(), "aux": out.aux_loss.detach(), "psnr": psnr(out.recon.detach(), target).mean()}
        total_rec = rec
        for perceptual in self._perceptual:
            p = perceptual(out.recon.float(), target.float()).mean()
            total_rec = total_rec + h.perceptual_weight * p
            logs["perceptual"] = p.detach()
        loss = total_rec + h.quantizer_weight * out.aux_loss
        if gan:
            g = hinge_g_loss(self.discriminators[kind](out.recon))
            weight = h.disc_weight
            if h.adaptive_disc_weight:
                weight = weight * adaptive_weight(total_rec, g, self.tokenizer.last_layer)
            loss = loss + weight * g
            logs.update(g=g.detach(), disc_weight=torch.as_tensor(weight, dtype=torch.float32))
        return loss, out.recon.detach(), logs

    # -- training -------------------------------------------------------------------------------------
    def _note_skipped(self, batches: dict[str, dict[str, Any]]) -> None:
        for batch in batches.values():
            for path, error in batch["skipped"]:
                if path not in self.skipped:
                    self.skipped[path] = error
                    warnings.warn(f"skipping a bad training file: {error}", stacklevel=2)

    def _step_uncounted(self, optimizer) -> None:
        """Step without advancing ``trainer.global_step``: Lightning counts every optimizer's
        step in manual optimization (Lightning issue #17958); ours counts generator steps."""
        before, after = optimizer._on_before_step, optimizer._on_after_step
        optimizer._on_before_step = optimizer._on_after_step = lambda: None
        try:
            optimizer.step()
        finally:
            optimizer._on_before_step, optimizer._on_after_step = before, after

    def _clip(self, optimizer) -> None:
        if exists(self.hparams.grad_clip):
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def training_step(self, batch: dict[str, dict[str, Any]], batch_idx: int) -> Tensor | None:
        self._note_skipped(batch)
        parts = {kind: b["pixels"] for kind, b in batch.items() if b["pixels"].numel()}
        if not parts:  # every file of this batch was bad
            return None
        opt_g, opt_d = self.optimizers()
        gan = self.global_step >= self.hparams.disc_start

        self.toggle_optimizer(opt_g)
        loss_g, fakes, logs = 0.0, {}, {}
        for kind, x in parts.items():
            loss, fakes[kind], kind_logs = self._generator_loss(kind, x, gan)
            loss_g = loss_g + loss
            logs.update({f"train/{kind}_{name}": value for name, value in kind_logs.items()})
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        self._clip(opt_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        if gan:
            self.toggle_optimizer(opt_d)
            loss_d = 0.0
            for kind, x in parts.items():
                real = x if kind == "image" else x[:, :, : fakes[kind].shape[2]]
                disc = self.discriminators[kind]
                loss_d = loss_d + hinge_d_loss(disc(real), disc(fakes[kind]))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            self._clip(opt_d)
            self._step_uncounted(opt_d)
            self.untoggle_optimizer(opt_d)
            logs["train/d_loss"] = loss_d.detach()

        sched_g, sched_d = self.lr_schedulers()
        sched_g.step()
        if gan:
            sched_d.step()
        logs["train/loss"] = loss_g.detach()
        logs["train/skipped_files"] = float(len(self.skipped))
        self.log_dict(logs, prog_bar=False, batch_size=sum(x.shape[0] for x in parts.values()))
        self.log("loss", loss_g.detach(), prog_bar=True, logger=False)
        return loss_g.detach()

    # -- validation: PSNR and codebook usage ------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        k = self.tokenizer.codebook_size
        self._val = {"counts": torch.zeros(k, dtype=torch.long, device=self.device), "psnr": []}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        x = batch["pixels"]
        if not x.numel():
            return
        out = self.tokenizer(x)
        target = x if x.ndim == 4 else x[:, :, : out.recon.shape[2]]
        self._val["psnr"].append(psnr(out.recon.clamp(-1, 1), target))
        self._val["counts"] += torch.bincount(out.codes.flatten(), minlength=self.tokenizer.codebook_size)

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("psnr"):
            return
        counts = self.trainer.strategy.reduce(self._val["counts"].float(), reduce_op="sum")
        p = counts / counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        self.log_dict(
            {
                "val/psnr": torch.cat(self._val["psnr"]).mean(),
                "val/codebook_usage": (counts > 0).float().mean(),
                "val/perplexity": entropy.exp(),
            },
            sync_dist=True,
        )

    # -- the end: export and report -------------------------------------------------------------------
    def on_fit_end(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            every_rank = [None] * dist.get_world_size()
            dist.all_gather_object(every_rank, self.skipped)
            self.skipped = {path: error for skipped in every_rank for path, error in skipped.items()}
        if not self.trainer.is_global_zero:
            return
        if self.skipped:
            report = Path(self.trainer.default_root_dir) / "skipped_files.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(self.skipped, indent=2))
            print(f"visual tokenizer: skipped {len(self.skipped)} bad file(s), listed in {report}")
        if exists(self.hparams.export_dir):
            path = self.tokenizer.save(self.hparams.export_dir)
            print(f"visual tokenizer: saved to {path} (fingerprint {self.tokenizer.fingerprint})")

