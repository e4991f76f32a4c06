"""The command lines: `imgcls train|predict|export|compare ...` (installed by pip) and `python -m imgcls ...`.

Each command is one module here with `build_parser(prog)` and `main(argv, prog)`. train.py, predict.py and
export.py in the checkout are thin wrappers around the same functions, so the flags, messages and exit codes
are the same whichever way a command is started; only the program name in the usage line differs.
"""

from __future__ import annotations

import importlib
import sys

from ..cli import print_lines, run_cli  # first: it sets the thread policy before torch loads
from ..errors import UserError

# command -> (module with build_parser / main, one line for the list)
COMMANDS = {
    "train": ("imgcls.commands.train", "train a preset (--version v5) on a data set; resumes a killed run"),
    "predict": ("imgcls.commands.predict", "predict with a trained run (its test split, a folder, files)"),
    "export": ("imgcls.commands.export", "export a run: ONNX, TorchScript, torch.export, safetensors"),
    "audit": ("imgcls.commands.audit", "audit a run's data: label errors, duplicates and leaks, outliers"),
    "compare": ("imgcls.compare", "the versions' table from their predictions (results/comparison.md)"),
}
USAGE = "usage: imgcls {" + ",".join(COMMANDS) + "} [flags]   (imgcls COMMAND --help for its flags)"


def command_module(name: str):
    if name not in COMMANDS:
        raise UserError(f"imgcls {name}: unknown command; choose one of {', '.join(COMMANDS)}")
    return importlib.import_module(COMMANDS[name][0])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        print_lines([USAGE, ""] + [f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items()])
        return 0 if argv else 2
    if argv[0] == "--version":
        from .. import __version__
        print_lines([f"imgcls {__version__}"])
        return 0
    return command_module(argv[0]).main(argv[1:], prog=f"imgcls {argv[0]}")


def console() -> None:
    """The `imgcls` console script (pyproject.toml's [project.scripts])."""
    run_cli(main)
