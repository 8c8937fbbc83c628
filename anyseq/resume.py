"""Resuming training: ``--ckpt_path last`` finds the run to resume; checkpoints carry the RNG.

``anyseq fit ... --ckpt_path last`` resumes the newest run of the same command, wherever it saved.

Lightning looks for ``last.ckpt`` only in the folder of the run it is starting; with a logger that
folder is a fresh ``version_N``, so the same command plus ``--ckpt_path last`` silently started
over. Here ``last`` means what litgpt's ``resume="auto"`` means: the newest checkpoint that any
earlier run of this command left where its checkpoint callbacks save (a ``last*.ckpt`` if there
is one, skipping any a killed run left unreadable).

Either way of naming the checkpoint resumes the same run: the model takes the checkpoint's
settings (its optimizer state and schedule were made with them), and every given model setting
that differs is named in a warning rather than half applied.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from anyseq.checkpoint import read_metadata
from anyseq.config import config_differences

CKPT_PATH_HELP = (
    "Resume from this checkpoint: a .ckpt file, the folder an fsdp2 run saves with "
    "save_distributed_checkpoint=true, or `last`: the newest checkpoint any earlier run of this "
    "command saved (a last*.ckpt if there is one, else the newest *.ckpt; unreadable ones are "
    "skipped), or step 0 if there is none. The resumed run takes the checkpoint's model settings; "
    "to train on with others, fine-tune instead: --model.init_args.init_from=CKPT."
)


def checkpoint_folders(trainer: Namespace) -> list[str]:
    """Where a trainer with these (instantiated) settings saves checkpoints, as glob patterns over
    every logger version. Lightning's rule: the callback's dirpath, else the first logger's
    ``save_dir/name/version/checkpoints``, else ``default_root_dir/checkpoints``; without a
    ModelCheckpoint, its default one saves there unless checkpointing is off."""
    root = Path(os.path.expanduser(trainer.default_root_dir or os.getcwd()))
    callbacks = trainer.callbacks if isinstance(trainer.callbacks, list) else [trainer.callbacks]
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    if not checkpoints and trainer.enable_checkpointing is not False and not trainer.barebones:
        checkpoints = [ModelCheckpoint()]
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    first = loggers[0] if loggers else False
    if first is None or first is True:  # Lightning's default logger
        logs = root / "lightning_logs"
    else:
        logs = Path(first.save_dir or root) / str(first.name) if first else None
    folders = []
    for callback in checkpoints:
        if callback.dirpath:
            folders.append(glob.escape(str(callback.dirpath)))
        elif logs:
            folders.append(f"{glob.escape(str(logs))}/*/checkpoints")
        else:
            folders.append(glob.escape(str(root / "checkpoints")))
    return folders


def checkpoints_to_resume(folders: list[str]) -> list[Path]:
    """The checkpoints (files, or folders of sharded FSDP2 ones) in those folders, best first: the
    ``last*.ckpt`` ones, saved to resume from, then any other; newest first within each."""
    found = {Path(path) for folder in folders for path in glob.glob(f"{folder}/*.ckpt")}
    return sorted(found, key=lambda path: (path.name.startswith("last"), path.stat().st_mtime), reverse=True)


def check_accelerator(name: Any) -> None:
    """``--trainer.accelerator`` must be a device this machine has: Lightning's own error for a
    missing GPU ("No supported gpu backend found!") names neither the setting nor a way out."""
    kinds = ["cuda", "mps"] if name == "gpu" else [name]
    if not isinstance(name, str) or not all(kind in AcceleratorRegistry for kind in kinds):
        return  # auto, an Accelerator object, or a name Lightning itself will reject
    if not any(AcceleratorRegistry[kind]["accelerator"].is_available() for kind in kinds):
        raise ValueError(f"--trainer.accelerator={name}: this machine has no {name} device that torch can use; "
                         "use --trainer.accelerator=cpu (or auto)")


class ResumingCLI(LightningCLI):
    """LightningCLI whose ``fit --ckpt_path last`` finds the checkpoint of an earlier run, and whose
    resumes (from ``last``, a file or a sharded folder alike) run the checkpoint's model settings."""

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            fit = self._subcommand_parsers["fit"]
            next(action for action in fit._actions if action.dest == "ckpt_path").help = CKPT_PATH_HELP

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's step that gives the model a checkpoint file's hyperparameters, right after
        parsing: here ``last`` is found first, so it gets the same rule, and the overridden given
        settings are named."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        path = config.get("ckpt_path")
        if subcommand == "fit" and path == "last":
            path = config["ckpt_path"] = self._find_last(config)
        if path and Path(path).exists():  # else Lightning's error for a missing file, or its own keywords
            self._take_model_settings(subcommand, str(path), read_metadata(Path(path)).get("hyper_parameters"))

    def _find_last(self, config: Namespace) -> str | None:
        """The checkpoint ``--ckpt_path last`` means (None: start at step 0)."""
        settings = config.clone()
        del settings["model"], settings["data"]  # only the trainer's callbacks and loggers are built
        trainer = self._parser("fit").instantiate_classes(settings, instantiate_groups=False).trainer
        folders = checkpoint_folders(trainer)
        if not folders:
            rank_zero_warn("--ckpt_path last: this run saves no checkpoints, so it cannot resume later either; add "
                           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint "
                           "--trainer.callbacks.save_last=true")
            return None
        damaged = []
        for path in checkpoints_to_resume(folders):
            try:
                read_metadata(path)
            except (ValueError, FileNotFoundError) as err:
                rank_zero_warn(f"--ckpt_path last: skipping a damaged checkpoint (a run killed while saving?): {err}")
                damaged.append(str(path))
                continue
            rank_zero_info(f"--ckpt_path last: resuming from {path}")
            return str(path)
        if damaged:
            raise ValueError(f"--ckpt_path last: every checkpoint an earlier run left is unreadable "
                             f"({', '.join(damaged)}); delete them to start at step 0, or name a good one with "
                             "--ckpt_path PATH")
        rank_zero_info(f"--ckpt_path last: no earlier run left a checkpoint in {', '.join(folders)}; "
                       "starting at step 0")  # a first run: the command is the same every time
        return None

    def _take_model_settings(self, subcommand: str, path: str, hparams: dict[str, Any] | None) -> None:
        """The model settings become the checkpoint's (LightningCLI's form of them); a warning names
        each given one that differs."""
        hparams = {key: value for key, value in (hparams or {}).items() if key != "_instantiator"}
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        given = as_dict(self.config[subcommand]["model"])
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        differ = config_differences(given, as_dict(self.config[subcommand]["model"]))
        if differ:
            listed = "; ".join(f"{key.removeprefix('init_args.')}: given {mine!r}, checkpoint's {theirs!r}"
                               for key, (mine, theirs) in differ.items())
            rank_zero_warn(f"--ckpt_path {path}: a resumed run keeps the checkpoint's model settings, so these given "
                           f"ones are not used: {listed}. To change them, fine-tune from it instead: "
                           f"--model.init_args.init_from={path}")

    def before_instantiate_classes(self) -> None:
        check_accelerator(self._get(self.config, "trainer").get("accelerator"))


def as_dict(value: Any) -> Any:
    return value.as_dict() if isinstance(value, Namespace) else value


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
