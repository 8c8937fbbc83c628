"""LightningModule that trains the audio codec: ``anyseq fit --config configs/tokenizer/audio_*.yaml``.

Generator losses: multi-scale mel, multi-scale STFT, waveform L1 and, from
``discriminator_start_step`` on, adversarial + feature-matching losses against the
multi-period and multi-scale STFT discriminators (updated first, each step, by their own
optimizer); combined by a :class:`~anyseq.tokenizers.audio_losses.Balancer` (by default each
weight is the loss's share of the gradient on the reconstruction), plus the quantizer loss.
Manual optimization: one generator and one discriminator optimizer.

The codec and discriminators are built in ``configure_model`` so a VQ quantizer decides its
cross-rank codebook sync after the process group exists. Under DDP use
``strategy: ddp_find_unused_parameters_true``: each of the two backward passes leaves the
other network's parameters unused.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from torch import Tensor

from anyseq.resume import ResumesRandomState
from anyseq.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from anyseq.tokenizers.audio_losses import (
    AdversarialKind,
    Balancer,
    DiscriminatorConfig,
    Discriminators,
    MultiScaleMelLoss,
    MultiScaleSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    si_sdr,
    waveform_l1,
)
from anyseq.tokenizers.base import config_from_dict, fine_tuning_config, load_for_fine_tuning
from anyseq.training import warmup_cosine


def _as_config(cls: type, value: Any) -> Any:
    """A config dataclass from itself, a dict (CLI overrides of a ``None`` default give one) or None."""
    if value is None:
        return cls()
    return config_from_dict(cls, value) if isinstance(value, dict) else value


class AudioTokenizerModule(ResumesRandomState, L.LightningModule):
    """Trains :class:`~anyseq.tokenizers.audio.AudioTokenizer`.

    Args:
        tokenizer: the codec's architecture (sample rate, frame rate, widths, quantizer).
        discriminator: sizes of the MPD and multi-scale STFT discriminators.
        discriminator_start_step: first batch with adversarial training; ``None`` trains
            without discriminators (no second optimizer is built). Note that Lightning's
            ``trainer.max_steps`` counts optimizer steps, two per batch from here on.
        adversarial_loss: ``hinge`` (EnCodec) or ``mse`` (least squares; HiFi-GAN, DAC).
        balance: weights are shares of the reconstruction's gradient (EnCodec's balancer);
            ``False``: a plain weighted sum (DAC: mel 15, adversarial 1, features 2).
        mel_weight / stft_weight / waveform_weight / adversarial_weight / feature_weight: loss
            weights. The waveform's large share is what makes the codec match phase (SI-SDR).
        quantizer_weight: weight of the quantizer's own loss (VQ commitment; 0 for FSQ), added
            outside the balancer since it acts on the latent.
        mel_windows / stft_windows: window sizes of the multi-scale spectral losses.
        lr / discriminator_lr / betas / warmup_steps / max_steps / min_lr_ratio: AdamW with
            linear warmup and cosine decay over ``max_steps`` batches (by default, the batches
            ``trainer.max_steps`` allows).
        grad_clip: gradient norm clip of both networks (None: off).
        export_dir: where the trained tokenizer is saved (``AudioTokenizer.save``) when fit ends.
        init_from: a saved tokenizer folder to fine-tune: architecture and weights from there
            (``tokenizer`` may be null, or must match it), fresh optimizers, schedule and
            discriminators. ``--ckpt_path`` instead continues an interrupted run.
    """

    def __init__(
        self,
        tokenizer: AudioTokenizerConfig | None = None,
        discriminator: DiscriminatorConfig | None = None,
        discriminator_start_step: int | None = 0,
        adversarial_loss: AdversarialKind = "hinge",
        balance: bool = True,
        mel_weight: float = 1.0,
        stft_weight: float = 1.0,
        waveform_weight: float = 6.0,
        adversarial_weight: float = 2.0,
        feature_weight: float = 2.0,
        quantizer_weight: float = 1.0,
        mel_windows: list[int] | None = None,
        stft_windows: list[int] | None = None,
        lr: float = 3e-4,
        discriminator_lr: float | None = None,
        betas: tuple[float, float] = (0.8, 0.99),
        warmup_steps: int = 0,
        max_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        grad_clip: float | None = 100.0,
        export_dir: str | None = None,
        init_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if init_from is not None:
            self.config = fine_tuning_config(init_from, AudioTokenizer, tokenizer)
        else:
            self.config = _as_config(AudioTokenizerConfig, tokenizer)
        self.discriminator_config = _as_config(DiscriminatorConfig, discriminator)
        self.config.resolved_strides()  # fail at construction on an inconsistent config
        if adversarial_loss not in ("hinge", "mse"):
            raise ValueError(f"adversarial_loss must be 'hinge' or 'mse', got {adversarial_loss!r}")
        sr = self.config.sample_rate
        self.mel_loss = MultiScaleMelLoss(sr, mel_windows) if mel_windows else MultiScaleMelLoss(sr)
        self.stft_loss = MultiScaleSTFTLoss(stft_windows) if stft_windows else MultiScaleSTFTLoss()
        h = self.hparams
        self.balancer = Balancer(
            {"mel": h.mel_weight, "stft": h.stft_weight, "waveform": h.waveform_weight,
             "adversarial": h.adversarial_weight, "feature": h.feature_weight},
            balance=balance,
        )  # fmt: skip
        self.tokenizer: AudioTokenizer | None = None
        self.discriminators: Discriminators | None = None

    @property
    def adversarial(self) -> bool:
        return self.hparams.discriminator_start_step is not None

    def configure_model(self) -> None:
        if self.tokenizer is not None:
            return
        init_from = self.hparams.init_from
        self.tokenizer = AudioTokenizer(self.config) if init_from is None else load_for_fine_tuning(init_from, self.config)
        if self.adversarial:
            self.discriminators = Discriminators(self.discriminator_config)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        rate = getattr(dm, "sample_rate", None)
        if rate is not None and rate != self.config.sample_rate:
            raise ValueError(
                f"data.sample_rate={rate} but the tokenizer works at {self.config.sample_rate} Hz; "
                "set both to the same rate (files at other rates are resampled on reading)"
            )

    # -- losses ----------------------------------------------------------------------------------
    def reconstruction_losses(self, recon: Tensor, wav: Tensor) -> dict[str, Tensor]:
        return {"mel": self.mel_loss(recon, wav), "stft": self.stft_loss(recon, wav), "waveform": waveform_l1(recon, wav)}

    def _step(self, optimizer, loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if isinstance(optimizers, list) else (optimizers, None)
        wav = batch
        out = self.tokenizer(wav)
        recon = out.recon[..., : wav.shape[-1]]
        gan = self.adversarial and self.trainer.fit_loop.total_batch_idx >= self.hparams.discriminator_start_step
        kind = self.hparams.adversarial_loss
        logs: dict[str, Tensor] = {}

        if gan:
            with self.toggled_optimizer(opt_d):
                loss_d = discriminator_loss(self.discriminators(wav), self.discriminators(recon.detach()), kind)
                self._step(opt_d, loss_d)
            logs["discriminator"] = loss_d.detach()

        losses = self.reconstruction_losses(recon, wav)
        with self.toggled_optimizer(opt_g) if gan else nullcontext():
            if gan:
                fake = self.discriminators(recon)
                with torch.no_grad():
                    real = self.discriminators(wav)
                losses["adversarial"] = generator_loss(fake, kind)
                losses["feature"] = feature_matching_loss(real, fake)
            surrogate = self.balancer.surrogate(losses, recon) + self.hparams.quantizer_weight * out.aux_loss
            self._step(opt_g, surrogate)
        losses["quantizer"] = out.aux_loss

        schedulers = self.lr_schedulers()
        sched_g, sched_d = schedulers if isinstance(schedulers, list) else (schedulers, None)
        sched_g.step()
        if gan:  # the discriminators' schedule starts with them
            sched_d.step()
        logs.update({k: v.detach() for k, v in losses.items()})
        logs["si_sdr"] = si_sdr(recon.detach(), wav).mean()
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=wav.shape[0])
        self.log("mel", logs["mel"], prog_bar=True, logger=False, batch_size=wav.shape[0])

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        wav = batch
        recon = self.tokenizer(wav).recon[..., : wav.shape[-1]]
        metrics = {
            "si_sdr": si_sdr(recon, wav).mean(),
            "mel_distance": self.mel_loss(recon, wav),
            "stft_distance": self.stft_loss(recon, wav),
        }
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True, sync_dist=True, batch_size=wav.shape[0])

    # -- optimisation ----------------------------------------------------------------------------
    def _total_batches(self) -> int:
        """Length of the schedule in batches. Lightning's ``max_steps`` counts optimizer steps:
        one per batch, two once the discriminators train."""
        h = self.hparams
        if h.max_steps:
            return h.max_steps
        steps = self.trainer.max_steps if self.trainer.max_steps > 0 else 100_000
        start = h.discriminator_start_step
        return steps if start is None or steps <= start else start + (steps - start) // 2

    def _adamw(self, params, lr: float, total: int):
        h = self.hparams
        opt = torch.optim.AdamW(params, lr=lr, betas=tuple(h.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, h.warmup_steps, total, h.min_lr_ratio))
        return opt, sched

    def configure_optimizers(self):
        """The codec's warmup and cosine span every batch; the discriminators' (own warmup
        included) span the batches from ``discriminator_start_step`` on, so both end together."""
        total = self._total_batches()
        opt_g, sched_g = self._adamw(self.tokenizer.parameters(), self.hparams.lr, total)
        if self.discriminators is None:
            return [opt_g], [sched_g]
        opt_d, sched_d = self._adamw(self.discriminators.parameters(), self.hparams.discriminator_lr or self.hparams.lr,
                                     max(1, total - self.hparams.discriminator_start_step))
        return [opt_g, opt_d], [sched_g, sched_d]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["balancer"] = self.balancer.state_dict()
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "balancer" in checkpoint:  # not in a checkpoint written before the balancer's state was saved
            self.balancer.load_state_dict(checkpoint["balancer"])
        super().on_load_checkpoint(checkpoint)

    # -- export ----------------------------------------------------------------------------------
    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.tokenizer.save(self.hparams.export_dir)
