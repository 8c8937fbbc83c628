"""The ``anyseq`` console script.

``fit / validate / test / predict`` are LightningCLI: the YAML recipe names the
LightningModule and LightningDataModule by class path, so the unified transformer and
every tokenizer train through the same command. The other subcommands are plain
argparse programs, each living beside the code it drives and imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import linecache
import sys
import textwrap
import warnings

# subcommand -> its help line; LightningCLI runs each
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a model or a tokenizer from a YAML recipe (configs/); the same command plus "
           "`--ckpt_path last` resumes the newest checkpoint an earlier run of it saved",
    "validate": "run the validation loop",
    "test": "run the test loop",
    "predict": "run the predict loop",
}
# imported before the parser is built, so that --model / --data list them as known subclasses
LIGHTNING_CLASSES = ("anyseq.training", "anyseq.data.datamodule", "anyseq.tokenizers.visual_module",
                     "anyseq.tokenizers.visual_data", "anyseq.tokenizers.audio_module", "anyseq.tokenizers.audio_data")
CLASS_HELP = ("--model and --data take a class path and its init_args (known subclasses below); "
              "show a class's own options with e.g. `anyseq {command} --model.help anyseq.training.AnySeqModule` "
              "or `--data.help anyseq.data.datamodule.ShardDataModule`.")

# subcommand -> (module, one-line help). Each module defines ``main(argv) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "tokenize-dataset": ("anyseq.data.tokenize", "manifest of mixed-media records -> token shards"),
    "generate": ("anyseq.generate", "any-to-any sampling from a checkpoint to files"),
    "demo": ("anyseq.demo", "the whole pipeline on a built-in synthetic world, with an HTML report"),
    "eval-tokenizer": ("anyseq.tokenizers.evaluate", "reconstruction metrics of a trained media tokenizer"),
    "train-text-tokenizer": ("anyseq.tokenizers.text", "train a sentencepiece text tokenizer from text files"),
    "export-hf": ("anyseq.export", "export a checkpoint to the Hugging Face Llama format"),
}

USAGE = """usage: anyseq <command> [options]

Training (LightningCLI; `anyseq fit --help`, `anyseq fit --config X.yaml --print_config`):
{training}

Programs:
{programs}

`anyseq <command> --help` shows the options of each command.
"""


def lightning_cli(argv: list[str]) -> int:
    """LightningCLI; a bad setting ends in one line naming it (exit 2), a bug keeps its traceback."""
    try:
        run_lightning_cli(argv)
    except Exception as err:
        wrong = message_for_the_user(err)
        if wrong is None:
            raise
        print(f"anyseq {argv[0]}: error: {wrong}", file=sys.stderr)
        if isinstance(err, argparse.ArgumentError):  # instead of jsonargparse's page of usage
            print(f"see `anyseq {argv[0]} --help`", file=sys.stderr)
        return 2
    return 0


def message_for_the_user(err: BaseException) -> str | None:
    """The message of an error that is about the user's input, None for a bug.

    Input errors are the ones raised on purpose: by a ``raise`` statement in anyseq's code (a
    ValueError, KeyError or TypeError there names the setting and what to type), Lightning's
    MisconfigurationException, a missing file, or the parser's own (an unknown or mistyped
    option). jsonargparse wraps errors raised while it builds the model and data, so the
    innermost cause is the one read.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from anyseq.helpers import error_message

    if isinstance(err, argparse.ArgumentError):
        return str(err)
    while err.__cause__ is not None:
        err = err.__cause__
    text = error_message(err)
    if isinstance(err, (FileNotFoundError, MisconfigurationException)):
        return text
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not isinstance(err, (ValueError, KeyError, TypeError)):
        return None
    ours = tb.tb_frame.f_globals.get("__name__", "").startswith("anyseq.")
    deliberate = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip().startswith("raise")
    return text if ours and deliberate else None


def run_lightning_cli(argv: list[str]) -> None:
    from lightning.pytorch import LightningDataModule, LightningModule

    from anyseq.resume import ResumingCLI

    for module in LIGHTNING_CLASSES:
        importlib.import_module(module)
    # parse errors raise (exit_on_error=False), for lightning_cli to say in one line
    parsers = {name: {"exit_on_error": False,
                      "description": f"{text[0].upper()}{text[1:]}. {CLASS_HELP.format(command=name)}"}
               for name, text in LIGHTNING_COMMANDS.items()}

    with warnings.catch_warnings():  # argv is always given on purpose: the console's or the demo's
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        # The tokenizers optimise by hand and resume from the weights after a step, which is what
        # the checkpoint holds; Lightning's advice (save the weights before the step) does not apply.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        # --ckpt_path last resumes an earlier version's checkpoint into a new version folder, on purpose
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
        ResumingCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, **parsers},
        )
    close_process_group()


def close_process_group() -> None:
    """Destroy the process group a finished multi-process run leaves open.

    Left to interpreter exit, gloo's worker threads are torn down after Python is, and the
    process now and then aborts (SIGABRT, "terminate called without an active exception") after
    the run succeeded. Only after success: a rank that failed must not wait on the others here.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    training = "\n".join(textwrap.fill(text, 98, initial_indent=f"  {name:<11}", subsequent_indent=" " * 13)
                         for name, text in LIGHTNING_COMMANDS.items())
    programs = "\n".join(f"  {name:<21}{text}" for name, (_, text) in COMMANDS.items())
    usage = USAGE.format(training=training, programs=programs)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        return lightning_cli([command, *rest])
    if command not in COMMANDS:
        print(f"anyseq: unknown command {command!r}\n", file=sys.stderr)
        print(usage, file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
