"""argparse with the project's flag conventions, for every command-line tool.

- Flags are spelled with underscores (`--video_root`); the dash spelling (`--video-root`) is accepted as an alias
  (and a flag declared with dashes gets its underscore spelling), so either style works everywhere.
- `--help` shows each option's default.
- Bad flags exit 2 with argparse's usage line and one `error:` line, as llavaction_jax.cli does for other
  user errors.
"""
import argparse

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


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        return super().add_argument(*_spellings(names), **_with_default_help(kwargs))

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        _patch(group)
        return group

    def add_mutually_exclusive_group(self, **kwargs):
        group = super().add_mutually_exclusive_group(**kwargs)
        _patch(group)
        return group


def _with_default_help(kwargs):
    # argparse prints no help line (so no default) for an option without help text.
    if not kwargs.get("help") and kwargs.get("default") not in (None, False, argparse.SUPPRESS):
        kwargs = dict(kwargs, help="(default: %(default)s)")
    return kwargs


def _patch(group):
    add = group.add_argument
    group.add_argument = lambda *names, **kwargs: add(*_spellings(names), **_with_default_help(kwargs))


HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def run_absl(main, doc: str, *, aliases=(), user_errors=()) -> None:
    """`absl.app.run(main)` under the same conventions as the argparse tools: each flag in `aliases` also
    answers to its dash spelling, `--help` prints `doc` and the flags with their defaults and exits 0 (absl
    exits 1), a bad flag is one `error:` line and exit 2 (absl: exit 1), and `main`'s user errors follow
    llavaction_jax.cli (exit 2, one line)."""
    import sys
    from absl import app, flags
    from llavaction_jax import cli
    for name in aliases:
        flags.DEFINE_alias(name.replace("_", "-"), name)
    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        flags.FLAGS.mark_as_parsed()
        print(doc)
        print(flags.FLAGS.main_module_help())
        sys.exit(0)

    def parse(argv):
        try:
            return parse_flags(argv)
        except cli.UserError as e:
            sys.exit(cli.report_user_error(e))

    app.run(lambda argv: sys.exit(cli.run(main, argv, user_errors=tuple(user_errors))), flags_parser=parse)


def parse_flags(argv):
    """absl's `flags.FLAGS(argv)` with its errors as cli.UserError: a bad flag value, and an ml_collections
    `--config.<path>` override naming a key the config does not have (absl lets that one through as a bare
    KeyError / AttributeError)."""
    from absl import flags
    from llavaction_jax.cli import UserError
    try:
        return flags.FLAGS(argv)
    except flags.IllegalFlagValueError as e:
        raise bad_config_override(e) or UserError(str(e)) from None
    except flags.Error as e:
        raise UserError(str(e)) from None
    except (KeyError, AttributeError) as e:
        err = unknown_config_override(e, argv)
        if err is None:
            raise
        raise err from None


_PARSER_KINDS = {"IntegerParser": "an int", "FloatParser": "a float (or an int)", "BooleanParser": "a bool",
                 "TupleParser": "a tuple"}


def bad_config_override(err: BaseException):
    """For `--config.<path>=v` whose value does not parse as the field's type (ml_collections gives the override
    the base default's parser): the UserError naming config.<path> and the type, or None for another flag."""
    import re
    from absl import flags
    from llavaction_jax.cli import UserError
    match = re.match(r"flag --(\w+\.[\w.]+)=(.*?): (.*)$", str(err), re.S)
    if not match or match.group(1) not in flags.FLAGS:
        return None
    kind = _PARSER_KINDS.get(type(flags.FLAGS[match.group(1)].parser).__name__)
    if kind is None:
        return None
    reason = match.group(3)
    return UserError(f"bad config value {match.group(2)!r}", match.group(1),
                     kind if reason.startswith("(") else f"{kind} ({reason})")


def unknown_config_override(err: BaseException, argv):
    """The UserError for `--config.<path>=v` naming a key the (locked) ml_collections config lacks, or None.

    ml_collections' message quotes the key and may add `Did you mean "x"`; the override in `argv` holding that
    key gives the dotted path (configs/validate.py words the same error for keys set in a config file)."""
    import re
    from llavaction_jax.cli import UserError
    while err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    message = str(err.args[0]) if err.args else ""
    key = re.match(r"'(\w+)'", message)
    if not key:
        return None
    key = key.group(1)
    for arg in argv[1:]:
        override = re.match(r"--?(?:no)?(\w+)\.([\w.]+)", arg)
        if override and key in override.group(2).split("."):
            flag, parts = override.group(1), override.group(2).split(".")
            path = ".".join([flag] + parts[:parts.index(key) + 1])
            close = re.search(r'Did you mean "(\w+)"', message)
            hint = (f"did you mean {path.rsplit('.', 1)[0]}.{close.group(1)}?" if close
                    else f"a key of the config under {path.rsplit('.', 1)[0]}")
            return UserError(f"unknown config key {key!r}", path, hint)
    return None
