"""The command-line and config-file layer: one flag per Config field (grouped for --help, with each preset's
value), and a --config file's values parsed by the same flag parsers as typed text."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import RENAMED, RUN_STATE, Config, parse_bool, parse_bool_or_auto, parse_size, renamed
from .errors import UserError
from .presets import VERSIONS


def read_config_file(path: str) -> dict[str, Any]:
    """The Config fields in a JSON file (a run's config.json) or, with PyYAML installed, a YAML file, as
    overrides under the flags the user typed (timm's `-c args.yaml`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UserError(f"--config {path}: YAML needs PyYAML (pip install pyyaml); or give JSON") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"--config {path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of settings, e.g. a run's config.json")
    values = renamed(values)  # an older config.json's names of renamed settings
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise UserError(f"--config {path}: unknown settings {', '.join(unknown)}; see train.py --help")
    return values


# --help groups the flags by area: each group starts at this field and runs, in Config's field order, to the
# next one (a new field joins the group of the field above it).
FLAG_GROUPS = {"version": "run", "data": "data", "model": "model", "epochs": "optimisation", "loss": "loss",
               "sampler": "sampling", "hflip": "augmentation", "scheduler": "schedule", "swa_start": "SWA",
               "metric": "validation", "amp": "speed", "tensorboard": "logging",
               "crt_sampler": "long tail, after training (cRT, decision tau)", "teacher": "distillation",
               "contrast": "contrastive auxiliary loss", "tta": "prediction"}


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else \
            ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def preset_values(name: str, default: Any) -> str:
    """'v1 0.001, v2 0.0001, v2.1 0.0001, v3 0.001' (or 'every version: X'): what each preset sets."""
    values = {v: _shown(preset.get(name, default)) for v, preset in VERSIONS.items()}
    if len(set(values.values())) == 1:
        return f"every version: {next(iter(values.values()))}"
    return ", ".join(f"{v} {value}" for v, value in values.items())


def field_parser(f: dataclasses.Field):
    """The parser of a Config field's flag. A value typed on the command line and a value in a --config file both
    go through it (train.py, parse_config_values): one set of rules. A parser's UserError becomes argparse's own
    error, which names the flag (`argument --refit: 'maybe': expected true/false`)."""
    parse = f.metadata.get("parse") or _plain_type(f)

    def convert(text: str):
        try:
            return parse(text)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__  # argparse's "invalid int value: '1.5'"
    convert.is_bool = parse in (parse_bool, parse_bool_or_auto)
    return convert


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field, in argument groups by area; the help shows each preset's value.
    Defaults are SUPPRESSed so that only flags the user typed override."""
    group = parser
    for f in dataclasses.fields(Config):
        if f.name in FLAG_GROUPS:
            group = parser.add_argument_group(FLAG_GROUPS[f.name])
        if f.name in ("version", "fold"):
            continue
        flag = "--" + f.name.replace("_", "-")
        old = [f"--{o.replace('_', '-')}" for o, new in RENAMED.items() if new == f.name]  # aliases, said so
        parse = field_parser(f)
        # Booleans work as bare switches (--compile) and with a value (--compile false).
        extra = dict(nargs="?", const=True) if parse.is_bool else {}
        help_text = f"{f.metadata['help']} ({preset_values(f.name, f.default)})".replace("%", "%%")
        if old:
            help_text += f"; {', '.join(old)}: its old name, still accepted"
        group.add_argument(flag, *old, dest=f.name, type=parse, default=argparse.SUPPRESS,
                           choices=f.metadata.get("choices"), metavar=f.name.upper(), help=help_text, **extra)


def _plain_type(f: dataclasses.Field):
    if isinstance(f.default, bool):
        return parse_bool
    if isinstance(f.default, int):
        return int
    if isinstance(f.default, float):
        return float
    return str


def as_flag_text(value: Any, sizes: bool = False) -> str:
    """A config file's value spelled as it would be typed after its flag: true/false, none, 80x60 (sizes),
    0.9,0.999, 0.5:0.5:0.5,1:1:1. An empty list stays '[]', which no parser takes."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, list) for v in value):
            return ",".join(":".join(as_flag_text(x) for x in v) for v in value)
        return ("x" if sizes else ",").join(as_flag_text(v) for v in value)
    return json.dumps(value)  # [] or a mapping: refused by every parser, and shown as the file has it


def parse_config_values(parser: argparse.ArgumentParser, values: dict[str, Any], path: str) -> tuple[dict, list]:
    """A --config file's settings through the command line's own path: each value spelled as its flag would
    be typed and parsed by `parser` (type and choices), before any file is touched. Returns (settings, notes):
    RUN_STATE keys and the fold are parsed, then left out with a note (flags say what to do to a folder; the
    file says what to train). A value its flag would refuse is one UserError naming the file and the key."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    settings, notes = {}, []
    exits = parser.exit_on_error
    parser.exit_on_error = False  # errors come back as exceptions, to be named after the file
    try:
        for key, value in values.items():
            if key in ("version", "fold"):
                if key == "version" and not isinstance(value, str):
                    raise UserError(f"--config {path}: \"version\": {json.dumps(value)}: expected a preset name, "
                                    f"e.g. \"v5\"")
                continue  # the version is train.py's to resolve; the fold trained is the command's
            text = as_flag_text(value, sizes=fields[key].metadata.get("parse") is parse_size)
            try:
                parsed = vars(parser.parse_args([f"--{key.replace('_', '-')}={text}"]))[key]
            except (argparse.ArgumentError, UserError) as err:
                message = err.message if isinstance(err, argparse.ArgumentError) else str(err)
                raise UserError(f"--config {path}: \"{key}\": {json.dumps(value)} refused ({message}); write it as "
                                f"the flag takes it (train.py --help)") from None
            if key in RUN_STATE:
                if parsed:
                    notes.append(f"--config {path}: \"{key}\": true ignored (it is what a command does to the run "
                                 f"folder, not a setting); pass --{key} to do it")
                continue
            settings[key] = parsed
    finally:
        parser.exit_on_error = exits
    return settings, notes
