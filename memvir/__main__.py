"""`python -m memvir <command>`: prepare a data set, train a model, build the report, drive the pipeline.

Each command's module owns its own argument parser; this file only dispatches, so that
`python -m memvir train --help` costs no import of the data-preparation code and vice versa. It first caps the
CPU kernels (memvir/portable.py; MEMVIR_PORTABLE=0 turns that off), before any command imports torch or numpy, so
that every run, evaluation and report gives the same floats on every x86-64 machine.
"""
import importlib
import sys

from . import portable
from .extras import extra_for

COMMANDS = {
    "prepare": ("memvir.data.prepare", "prepare a paper benchmark (cars196, cub200, sop, inshop) from its archives"),
    "train": ("memvir.train", "train (and periodically evaluate) a model; accepts the official main.py flags"),
    "report": ("memvir.trained", "build the result tables and figures from run folders"),  # the report, given a
    # reader of checkpoints (memvir.trained.load): memvir.report imports no training code
    "pipeline": ("memvir.pipeline", "the runs, chapters and book of a profile (what `make reproduce` drives)"),
    "keep": ("memvir.kept", "keep a profile's finished runs' small files in results/kept/ (git), or --restore them"),
    "kernels": ("memvir.kernels", "hash the CPU kernels a training uses, op by op (compare two machines' tables)"),
}


def main(argv=None):
    portable.apply()  # before torch, numpy or faiss loads; papermill's kernels and torchrun's workers inherit it
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
        msg = "usage: python -m memvir <command> [options]\n\ncommands:\n" + "\n".join(lines)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}\n\n{msg}", file=sys.stderr)
            return 2
        print(msg)
        return 0
    try:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return module.main(argv[1:])
    except BrokenPipeError:  # a command's reader closed stdout (`| head`): end quietly, as Unix tools do
        from .files import SIGPIPE_STATUS, reader_gone

        reader_gone()
        return SIGPIPE_STATUS
    except ModuleNotFoundError as exc:  # an optional dependency: say which extra brings it, in one line
        extra = extra_for(exc.name or "")
        if extra is None:
            raise
        print(f"error: `python -m memvir {argv[0]}` needs the module {exc.name.split('.')[0]!r}, which the "
              f"'{extra}' extra installs: pip install 'memvir[{extra}]'", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
