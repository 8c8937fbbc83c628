"""Resuming training: ``--ckpt_path last`` finds the run to resume; checkpoints carry the RNG.

``anyseq fit ... --ckpt_path last`` resumes the newest run of the same command, wherever it saved.

Lightning looks for ``last.ckpt`` only in the folder of the run it is starting; with a logger that
folder is a fresh ``version_N``, so the same command plus ``--ckpt_path last`` silently started
over. Here ``last`` means what litgpt's ``resume="auto"`` means: the newest ``last*.ckpt`` that any
earlier run of this command left where its checkpoint callbacks save.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import torch

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


def checkpoint_folders(trainer: Trainer) -> list[str]:
    """Where the trainer's checkpoint callbacks save, as glob patterns over every logger version
    (Lightning's own rule: the callback's dirpath, else the first logger's
    ``save_dir/name/version/checkpoints``, else ``default_root_dir/checkpoints``)."""
    folders = []
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            folders.append(glob.escape(str(callback.dirpath)))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)
            folders.append(f"{glob.escape(str(root))}/*/checkpoints")
        else:
            folders.append(glob.escape(str(Path(trainer.default_root_dir) / "checkpoints")))
    return folders


def last_checkpoint(folders: list[str]) -> Path | None:
    """The newest ``last*.ckpt`` (a file, or a folder for sharded FSDP2 checkpoints) in those folders."""
    found = [Path(path) for folder in folders for path in glob.glob(f"{folder}/last*.ckpt")]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


class ResumingCLI(LightningCLI):
    """LightningCLI whose ``fit --ckpt_path last`` finds the last checkpoint of an earlier run."""

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        folders = checkpoint_folders(self.trainer)
        found = last_checkpoint(folders)
        config["ckpt_path"] = str(found) if found else None
        if found:
            rank_zero_info(f"--ckpt_path last: resuming from {found}")
        elif folders:
            rank_zero_info(f"--ckpt_path last: no earlier run left a last checkpoint in {', '.join(folders)}; "
                           "starting from step 0")
        else:
            rank_zero_warn("--ckpt_path last: this run saves no checkpoints, so it cannot resume later either; add "
                           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint "
                           "--trainer.callbacks.save_last=true")


class ResumesRandomState:
    """LightningModule mixin: checkpoints carry the process's RNG states, put back at the first
    trained batch after loading (making the loader's iterator may draw from them first), so
    dropout, quantizer dropout and the like draw on as in the unbroken run. With the datasets'
    own per-item generators (``anyseq.data.resumable``) a resumed run equals an unbroken one."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # a run that resumed and trained nothing (its max_steps already reached) saves the
        # state it resumed with, not the one its own seeding left
        checkpoint["rng"] = getattr(self, "_pending_rng", None) or {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._pending_rng = checkpoint.get("rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        rng, self._pending_rng = getattr(self, "_pending_rng", None), None
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        return super().on_train_batch_start(batch, batch_idx)
