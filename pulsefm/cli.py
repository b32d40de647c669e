"""`pulse-fm` command line: one entry point, a sub-command per job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every sub-command's help: the module docstring as written, and each option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or action.required
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
        ):
            return text
        return f"{text} (default: %(default)s)".strip()


# sub-command -> (module with main(argv), one-line help). Modules are imported lazily so that
# `pulse-fm serve` does not import torch and `pulse-fm train` does not import the web stack.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("training.prepare", "recordings or a synthetic cohort -> segment store"),
    "train": ("training.train", "contrastive pretraining (single process or torchrun/DDP)"),
    "embed": ("training.embed", "frozen encoder -> Parquet of embeddings (store or recordings)"),
    "probe": ("training.probe", "linear probes on embeddings, participant-level splits, CIs"),
    "evaluate": ("training.evaluate", "probes + baselines + real-recording checks -> HTML report"),
    "ablate": ("training.ablate", "pretraining ablations (positives, KoLeo, momentum) -> table"),
    "export": ("training.export", "encoder + probe heads -> ONNX, Triton config, model cards"),
    "publish": ("training.publish", "validate + add a new version to the model repository, atomically"),
    "serve": ("service.serve", "the HTTP gateway (/v1/embed, /v1/predict; onnxruntime or Triton)"),
}


def usage() -> str:
    lines = ["usage: pulse-fm COMMAND [options]   (pulse-fm COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from pulsefm import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"pulse-fm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
