"""What every `infalign` command shares: its parser (a YAML file plus one flag per config field) and its config.

A command module is `add_parser(subparsers)` = one `add_command(...)` call, and `run(args)` =
`cfg = load(args, Config)`, one stage call, and printing.

A command's flags are added when its parser is first used (`CommandParser`), not when `infalign` starts: the
registries some configs take their choices from (losses, dataset kinds) import torch, and `infalign --help` or
`infalign tradeoff` should not wait seconds for it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

from ..config.base import add_config_arguments, load_config, overrides_from_args
from ..core.errors import InfalignError

__all__ = ["CommandParser", "add_command", "load", "served", "CONFIG_HELP"]

# `--config`'s help; {config} is the config class's name.
CONFIG_HELP = "YAML file with {config} keys; command-line flags override it"


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that adds its flags (`defer(fill)`) just before it parses or shows help."""

    _fill: Callable[[argparse.ArgumentParser], None] | None = None

    def defer(self, fill: Callable[[argparse.ArgumentParser], None]) -> None:
        self._fill = fill

    def _complete(self) -> None:
        fill, self._fill = self._fill, None
        if fill is not None:
            fill(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def add_command(subparsers, name: str, config: str, run: Callable[[argparse.Namespace], int], *, help: str,
                description: str | Callable[[], str], config_help: str = CONFIG_HELP,
                positional_config: bool = False, skip: Iterable[str] = (),
                more_flags: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Add subcommand `name` whose options are `config` (a class exported by `offline_infalign.config`, named
    so that it is imported only when this command is used) and which `run` executes.

    Its flags: `--config FILE` (`config_help`), one flag per config field except `skip`, then `more_flags(p)`.
    With `positional_config` the file is a positional CONFIG.yaml and `--config` its twin. A `description`
    that reads a registry is a function, called with the flags.
    """

    def fill(p: argparse.ArgumentParser) -> None:
        from .. import config as configs

        if callable(description):
            p.description = description()
        text = config_help.format(config=config)
        if positional_config:
            p.add_argument("config", nargs="?", default=None, metavar="CONFIG.yaml", help=text)
            # The other commands spell the file `--config`; accept that here too so one habit works everywhere.
            p.add_argument("--config", dest="config_flag", default=None, metavar="CONFIG.yaml",
                           help="the same YAML file, as a flag (like the other commands)")
        else:
            p.add_argument("--config", help=text)
        add_config_arguments(p, getattr(configs, config), skip=skip)
        if more_flags is not None:
            more_flags(p)

    p = subparsers.add_parser(name, help=help, description=None if callable(description) else description)
    p.set_defaults(func=run)
    if isinstance(p, CommandParser):
        p.defer(fill)
    else:  # a plain argparse parent (tests build one): add the flags now
        fill(p)


def load(args: argparse.Namespace, cls):
    """The config `cls` from the YAML file given (if any), overridden by the flags given on the command line."""
    path, twin = args.config, getattr(args, "config_flag", None)
    if path and twin and path != twin:
        raise InfalignError(f"two config files given: {path!r} and --config {twin!r}; pass one")
    return load_config(cls, path or twin, overrides_from_args(args, cls))


def served(procedure: str, n: int) -> str:
    """'best-of-4' for ("bon", 4): the procedure registry's label with N filled in."""
    from ..core.procedures import get_procedure

    return get_procedure(procedure).label.replace("N", str(n))
