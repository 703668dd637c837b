"""argparse with the project's flag conventions, the one parser library of every command-line tool.

- Flags are spelled with underscores (`--video_root`); the dash spelling (`--video-root`) is accepted as an alias
  (and a flag declared with dashes gets its underscore spelling), so either style works everywhere.
- Every flag has help text (a flag declared without is a TypeError when the parser is built), and `--help`
  shows each option's default and the whole description, examples included.
- Every tool answers `--version`, `--verbose` (llavaction_jax.logs: the library and TF/JAX/Orbax logs that are
  hidden by default) and `--debug` (the traceback of a user error too, llavaction_jax.cli).
- Bad flags exit 2 with argparse's usage line and one `error:` line, as llavaction_jax.cli does for other
  user errors.
"""
import argparse

from llavaction_jax import __version__, logs

__all__ = ["ArgumentParser", "HelpFormatter"]


def _spellings(names):
    """('--video-root',) -> ('--video_root', '--video-root'): the underscore form first (it names the dest)."""
    out = []
    for name in names:
        if name.startswith("--") and ("-" in name[2:] or "_" in name[2:]):
            under, dash = "--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")
            out += [n for n in (under, dash) if n not in out]
        elif name not in out:
            out.append(name)
    return tuple(out)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks, appends "(default: X)" where a default means something, and lists
    an option under its first (underscore) spelling only."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" not in text and action.option_strings and default not in (None, False, argparse.SUPPRESS)
                and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            text += " (default: %(default)s)"
        return text

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        first = action.option_strings[0]
        alias = "--" + first[2:].replace("_", "-")
        shown = [o for o in action.option_strings if o == first or o != alias]
        saved = action.option_strings
        action.option_strings = shown
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = saved


def _checked(names, kwargs):
    if not kwargs.get("help"):
        raise TypeError(f"argument {'/'.join(names)} has no help text (every flag says what it does)")
    return _spellings(names), kwargs


class ArgumentParser(argparse.ArgumentParser):
    """`common_flags`: add --version / --verbose / --debug (a subcommand's parser leaves them to its parent)."""

    def __init__(self, *args, common_flags: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        if common_flags:
            self.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                              help="print the version and exit")
            self.add_argument("--verbose", action="store_true",
                              help="show the TensorFlow / JAX / Orbax start-up and checkpoint logs hidden by default")
            self.add_argument("--debug", action="store_true",
                              help="show the traceback of a user error too (or set LLAVACTION_DEBUG=1)")

    def add_argument(self, *names, **kwargs):
        names, kwargs = _checked(names, kwargs)
        return super().add_argument(*names, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        return _patch(super().add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group(self, **kwargs):
        return _patch(super().add_mutually_exclusive_group(**kwargs))

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", _SubcommandParser)
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        if hasattr(parsed, "verbose"):
            logs.configure(verbose=bool(parsed.verbose))
        return parsed, rest


class _SubcommandParser(ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("common_flags", False)
        super().__init__(*args, **kwargs)


def _patch(group):
    add = group.add_argument
    group.add_argument = lambda *names, **kwargs: add(*_checked(names, kwargs)[0], **kwargs)
    return group
