"""A config from the command line: `--config FILE[:ARG]` (a Python file whose `get_config([ARG])` returns an
ml_collections ConfigDict, as in big_vision) plus `--config.<key>=<value>` overrides, as one checked config.

Every mistake is one cli.UserError line (exit 2 in every CLI): a missing file, a file that does not load (its
syntax error with the line), no get_config, an unknown key (with the closest known key), a value that does not
parse as its field's type. Values parse by the type the field has in the loaded config: bool (true/false/1/0),
int, float, str (taken as is), tuple (a Python literal, e.g. "(128, 256)"); a key without a value yet (None)
takes a Python literal, else the string. configs/validate.py then checks types, ranges and cross-field rules.
"""
import ast
import importlib.util
import os
import re
from typing import List, Sequence, Tuple

import ml_collections

from configs import base, validate
from llavaction_jax.cli import UserError

_OVERRIDE = re.compile(r"^--config\.([A-Za-z_][\w.]*)(?:=(.*))?$", re.S)
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """(argv without the overrides, [(dotted key, value text)]); `--config.k=v` and `--config.k v` both work."""
    rest, overrides, args = [], [], list(argv)
    i = 0
    while i < len(args):
        match = _OVERRIDE.match(args[i])
        if not match:
            rest.append(args[i])
        elif match.group(2) is not None:
            overrides.append((match.group(1), match.group(2)))
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            overrides.append((match.group(1), args[i + 1]))
            i += 1
        else:
            raise UserError("a config override without a value", args[i], f"{args[i]}=VALUE")
        i += 1
    return rest, overrides


def load_file(spec: str) -> ml_collections.ConfigDict:
    """`get_config([arg])` of the Python file in `spec` ("path" or "path:arg")."""
    path, _, arg = spec.partition(":") if not os.path.isfile(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}", "--config", "a Python file with get_config(), "
                        "e.g. configs/tiny.py")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"config file does not parse: {e.msg}", f"{path}:{e.lineno}", "valid Python") from None
    except Exception as e:     # the file's own error (NameError, ImportError, ...): its message and the file
        raise UserError(f"config file failed to load: {type(e).__name__}: {e}", path,
                        "a Python file with get_config()") from None
    if not callable(getattr(module, "get_config", None)):
        raise UserError("the config file has no get_config()", path, "def get_config(): returning a ConfigDict")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"get_config() returned a {type(config).__name__}", path, "an ml_collections ConfigDict")
    return config


def _parse(text: str, current, where: str):
    kind = type(current)
    try:
        if isinstance(current, bool):
            if text.lower() not in _BOOLS:
                raise UserError(f"bad config value {text!r}", where, "a bool (true or false)")
            return _BOOLS[text.lower()]
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text) if text.strip() else ()
            if isinstance(value, list) or not isinstance(value, tuple):
                value = tuple(value) if isinstance(value, list) else (value,)
            return value
    except (ValueError, SyntaxError) as e:
        names = {int: "an int", float: "a float (or an int)", tuple: "a tuple (a Python literal)",
                 list: "a tuple (a Python literal)"}
        raise UserError(f"bad config value {text!r}", where, f"{names.get(kind, kind.__name__)} ({e})") from None
    try:                                  # None, or a key the file adds: a literal, else the text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[Tuple[str, str]]):
    """`config` with each (dotted key, value text) set; an unknown key names the closest known one."""
    known = validate.known_keys()
    for key, text in overrides:
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            where = f"{validate.ROOT}.{'.'.join(parts[:depth + 1])}"
            last = depth == len(parts) - 1
            if not isinstance(node, ml_collections.ConfigDict):
                raise UserError(f"config key {parts[depth - 1]!r} is a value, not a section", where.rsplit(".", 1)[0])
            if part not in node:
                if parts[0] not in validate.NAMED_SECTIONS or depth == 0:
                    raise validate.unknown_key(where, known)
                with node.unlocked():          # a new named entry (e.g. evals.val): free-form
                    node[part] = _parse(text, None, where) if last else ml_collections.ConfigDict()
                if last:
                    break
            elif last:
                with node.unlocked():
                    node[part] = _parse(text, node[part], where)
            if not last:
                node = node[part]
    return config


def load(spec: str, overrides: Sequence[Tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """The config file `spec` with `overrides`, validated (configs/validate.py)."""
    return validate.validate(apply_overrides(load_file(spec), overrides))


def keys_help() -> str:
    """The `--config.<key>` keys of configs/base.py with their defaults, for a CLI's --help."""
    lines = ["config keys (override any with --config.<key>=<value>; defaults of configs/base.py):"]
    base_config = base.get_base_config()
    for key in validate.known_keys():
        try:
            value = validate.lookup(base_config, key[len(validate.ROOT) + 1:])
        except KeyError:        # a key of an optional section (e.g. config.demo.*): no base default
            continue
        if not isinstance(value, ml_collections.ConfigDict):
            lines.append(f"    --{key}={value!r}")
    return "\n".join(lines)
