"""One metrics line per interval: loss, tokens/s, TFLOP/s and MFU (torchtitan style).

Lightning's ThroughputMonitor has no peak for every GPU (a plain "NVIDIA H200" returns
none), so we keep our own table of dense bf16 peaks. On a device not in the table MFU is
left out rather than guessed.
"""

from __future__ import annotations

import re
import time

import lightning as L
import torch

# dense (non-sparse) bf16 tensor-core peaks, FLOP/s, by the words of the device's name
PEAK_BF16 = {
    "H200": 989e12,  # SXM
    "H200 NVL": 835e12,
    "GH200": 989e12,
    "H100": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The device's peak, from the most specific entry whose words its name contains (so
    "NVIDIA H100 NVL" is an H100 NVL, not an H100, and "NVIDIA L40" is no L4)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", name):
            return PEAK_BF16[key]
    return None


class Throughput(L.Callback):
    """Logs ``perf/tokens_per_s``, ``perf/tflops``, ``perf/mfu`` and prints a line every ``log_every`` steps.

    Steps are optimizer steps: with gradient accumulation an interval holds every micro-batch
    of its steps and ends once. Validation is not training: its time is left out.

    Args:
        log_every: optimizer steps between printed lines.
    """

    def __init__(self, log_every: int = 10):
        self.log_every = log_every
        self._t0: float | None = None
        self._tokens = 0
        self._step = 0  # the optimizer step the last line was printed at (or the run started from)
        self._validation_t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._tokens, self._step = None, 0, trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self._validation_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._t0 is not None:  # (the sanity check runs before training starts the clock)
            synchronize(pl_module.device)
            self._t0 += time.perf_counter() - self._validation_t0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = batch["input_ids"]
        self._tokens += ids.numel() * trainer.world_size
        step = trainer.global_step  # advanced by the micro-batch that stepped the optimizer, and only by it
        if step == self._step or step % self.log_every or self._t0 is None:
            return
        synchronize(ids.device)
        seconds = time.perf_counter() - self._t0
        tokens_per_s = self._tokens / seconds
        flops = pl_module.config.flops_per_token(ids.shape[1]) * tokens_per_s
        metrics = {"perf/tokens_per_s": tokens_per_s, "perf/tflops": flops / 1e12}
        peak = peak_flops(ids.device)
        if peak:
            metrics["perf/mfu"] = flops / (peak * trainer.world_size)
        pl_module.log_dict(metrics, rank_zero_only=True)
        loss = trainer.callback_metrics.get("loss")
        if trainer.is_global_zero:
            line = f"step {step:>6}  loss {float(loss):.4f}  " if loss is not None else f"step {step:>6}  "
            line += f"tokens/s {tokens_per_s:,.0f}  TFLOP/s {flops / 1e12:.2f}"
            line += f"  MFU {metrics['perf/mfu']:.1%}" if peak else ""
            print(line, flush=True)
        self._step, self._t0, self._tokens = step, time.perf_counter(), 0


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock times it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
