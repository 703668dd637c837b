"""Every command in README.md and docs/*.md runs as shown.

Each shell block carries a marker in the HTML comment lines right above its fence:
- `<!-- run -->`: the block runs as shown. The blocks of one file run in order in one bash session (shell
  variables carry over, as in a reader's terminal), in a scratch directory that looks like the repository root
  (`data_prep/`, `configs/`, ... linked in).
- `<!-- run: help (why) -->`: the block needs real data, a pod, the demo's output or minutes of compute, so
  each of our programs in it is checked with `--help`; any other program must be a known external tool
  (pip, gcloud, srun, ...).

Console scripts that are not on PATH (a checkout used without `pip install`) run through their `python -m`
module, from the table below.
"""
import concurrent.futures
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))

# Console script -> module; `llavaction-prep` takes the module's name as its first argument.
CONSOLE_SCRIPTS = {
    "llavaction-demo": "llavaction_demo",
    "llavaction-train": "llavaction_jax.train",
    "llavaction-eval": "llavaction_jax.eval",
    "llavaction-predict": "llavaction_jax.predict",
    "llavaction-convert": "llavaction_jax.convert",
    "llavaction-aot": "llavaction_jax.aot",
    "llavaction-plan": "llavaction_jax.plan",
}
PREP_SUBCOMMANDS = {"mqa": "data_prep.make_mqa", "instructions": "data_prep.make_instructions",
                    "tfrecord": "data_prep.to_tfrecord", "synthetic": "data_prep.synthetic_videos"}
SUBCOMMANDS = {"llavaction-prep": tuple(PREP_SUBCOMMANDS), "llavaction-convert": ("import", "export"),
               "hf": ("download",)}
# Programs the docs call that are not ours: not checked, but anything else unknown fails the test.
# bash / sbatch start the launch scripts (scripts/, checked by tests/test_launch_scripts.py).
EXTERNAL = {"pip", "cd", ".", "source", "gcloud", "srun", "lmms-eval", "bash", "sbatch"}
# Commands that wrap another command (checked in turn from the first of our programs in it).
WRAPPERS = {"srun"}
FENCE = re.compile(r"^```(\w*)")
MARKER = re.compile(r"^<!-- run(?:: help(?: \((?P<why>[^)]*)\))?)? -->$")
SHELLS = {"bash", "sh", "shell", "console"}
LINKED = ("data_prep", "configs", "benchmarks", "llavaction_jax", "llavaction_demo")


def shell_blocks():
    """(file, line, marker or None, text) of every shell block in the docs."""
    blocks = []
    for rel in DOCS:
        lines = open(os.path.join(ROOT, rel), encoding="utf-8").read().split("\n")
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if m.group(1) in SHELLS:
                marker, k = None, i - 1
                while k >= 0 and lines[k].startswith("<!--"):
                    if MARKER.match(lines[k]):
                        marker = lines[k]
                    k -= 1
                blocks.append((rel, i + 1, marker, "\n".join(lines[i + 1:end])))
            i = end + 1
    return blocks


def is_help(marker):
    return marker.startswith("<!-- run: help")


def commands(text):
    """The token lists of the simple commands in a block: continuations joined, comments dropped, split at
    newlines and && || ; |, with the inner command of `gcloud ... --command="..."` and of `srun ...` parsed in
    turn."""
    out, pending = [], ""
    for line in text.replace("\\\n", " ").split("\n"):
        pending += line + "\n"
        try:
            tokens = _tokens(pending)
        except ValueError:          # a quoted string continues on the next line
            continue
        pending = ""
        current = []
        for tok in tokens + [";"]:
            if tok in (";", "&&", "||", "|", "&"):
                if current:
                    out.extend(_expand(current))
                current = []
            elif tok.startswith("--command="):
                out.extend(commands(tok[len("--command="):]))
            else:
                current.append(tok)
    assert not pending.strip(), f"unterminated quote in {pending!r}"
    return out


def _tokens(line):
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def _expand(cmd):
    if cmd[0] in WRAPPERS:
        ours = [i for i, w in enumerate(cmd) if w in CONSOLE_SCRIPTS or w in SUBCOMMANDS or w in ("python", "python3")]
        return [cmd[:1]] + ([cmd[ours[0]:]] if ours else [])
    return [cmd]


def program(cmd):
    """(env, argv of the program's --help) for one of our programs, or None for an external tool."""
    env = {}
    while cmd and re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]):
        key, _, value = cmd.pop(0).partition("=")
        env[key] = value
    if not cmd:
        return None
    first = cmd[0]
    if first in ("python", "python3"):
        if cmd[1] == "-m":
            return None if cmd[2] == "venv" else (env, ("python", "-m", cmd[2], "--help"))
        if cmd[1].endswith(".py"):
            return env, ("python", cmd[1], "--help")
        raise AssertionError(f"cannot check {' '.join(cmd)!r} with --help (a heredoc belongs in a run block)")
    if first in CONSOLE_SCRIPTS or first in SUBCOMMANDS:
        argv = (first,)
        if first in SUBCOMMANDS:
            assert len(cmd) > 1 and cmd[1] in SUBCOMMANDS[first], f"{first}: unknown subcommand in {cmd}"
            argv += (cmd[1],)
        return env, argv + ("--help",)
    assert first in EXTERNAL, f"unknown program {first!r} in {' '.join(cmd)!r}"
    return None


@pytest.fixture(scope="module")
def shims(tmp_path_factory):
    """A PATH folder with `python` (this interpreter) and every console script that is not installed."""
    folder = tmp_path_factory.mktemp("bin")
    scripts = {"python": f'exec "{sys.executable}" "$@"', "python3": f'exec "{sys.executable}" "$@"'}
    bin_dir = os.path.dirname(sys.executable)
    installed = {name for name in list(CONSOLE_SCRIPTS) + ["llavaction-prep"]
                 if shutil.which(name, path=os.pathsep.join([bin_dir, os.environ["PATH"]]))}
    for name, module in CONSOLE_SCRIPTS.items():
        if name not in installed:
            scripts[name] = f'exec "{sys.executable}" -m {module} "$@"'
    if "llavaction-prep" not in installed:
        cases = " ".join(f'{sub}) shift; exec "{sys.executable}" -m {mod} "$@";;'
                         for sub, mod in PREP_SUBCOMMANDS.items())
        scripts["llavaction-prep"] = f'case "$1" in {cases} *) echo "usage: llavaction-prep ' \
                                     f'{{{",".join(PREP_SUBCOMMANDS)}}} ..." >&2; exit 2;; esac'
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/usr/bin/env bash\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(folder)


def _env(shims):
    # The shims, then this interpreter's own bin folder (a venv's console scripts and `hf`, even unactivated).
    path = os.pathsep.join([shims, os.path.dirname(sys.executable), os.environ["PATH"]])
    env = dict(os.environ, PATH=path,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)           # a reader's machine: one CPU device, not the suite's 8 fake ones
    return env


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A repository-root look-alike: the folders the commands name, linked in; outputs go under it."""
    root = tmp_path_factory.mktemp("docs_root")
    for name in LINKED:
        os.symlink(os.path.join(ROOT, name), root / name)
    return str(root)


def test_every_shell_block_is_marked():
    blocks = shell_blocks()
    assert len(blocks) >= 20 and {b[0] for b in blocks} >= {"README.md", "docs/data.md", "docs/evaluation.md"}
    unmarked = [f"{f}:{line}" for f, line, marker, _ in blocks if marker is None]
    assert not unmarked, f"shell blocks without a <!-- run --> / <!-- run: help (why) --> marker: {unmarked}"
    for f, line, marker, _ in blocks:
        if is_help(marker):
            assert MARKER.match(marker).group("why"), f"{f}:{line}: say why the block is only checked with --help"


def test_command_parsing():
    text = ('S=x\nJAX_PLATFORMS=cpu llavaction-aot --config c.py   # a comment\n'
            'llavaction-prep mqa --a "b c" \\\n    --d e && pip install .\n'
            'gcloud ssh vm --command="\n  cd x && . .venv/bin/activate &&\n  llavaction-train --config a.py"\n'
            'srun --nodes=4 -n 2 llavaction-eval --checkpoint x\n')
    assert commands(text) == [
        ["S=x"], ["JAX_PLATFORMS=cpu", "llavaction-aot", "--config", "c.py"],
        ["llavaction-prep", "mqa", "--a", "b c", "--d", "e"], ["pip", "install", "."],
        ["cd", "x"], [".", ".venv/bin/activate"], ["llavaction-train", "--config", "a.py"],
        ["gcloud", "ssh", "vm"], ["srun"], ["llavaction-eval", "--checkpoint", "x"]]
    assert program(["JAX_PLATFORMS=cpu", "llavaction-aot", "--config", "c.py"]) == (
        {"JAX_PLATFORMS": "cpu"}, ("llavaction-aot", "--help"))
    assert program(["llavaction-prep", "mqa", "--a"]) == ({}, ("llavaction-prep", "mqa", "--help"))
    assert program(["python3", "-m", "venv", ".venv"]) is None and program(["S=x"]) is None
    with pytest.raises(AssertionError, match="unknown program 'wget'"):
        program(["wget", "x"])


def test_help_blocks(shims):
    """Each of our programs named in a help-only block answers --help (exit 0, a text that lists flags)."""
    checks = {}
    for f, line, marker, text in shell_blocks():
        if marker and is_help(marker):
            for cmd in commands(text):
                found = program(list(cmd))
                if found:
                    checks.setdefault((tuple(sorted(found[0].items())), found[1]), f"{f}:{line}")
    names = {argv[0] if argv[0] != "python" else argv[2] for _, argv in checks}
    assert {"llavaction-train", "llavaction-aot", "llavaction-demo", "pytest"} <= names

    def check(item):
        (env, argv), where = item
        r = subprocess.run(list(argv), cwd=ROOT, env=dict(_env(shims), **dict(env)), capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0 or not re.search(r"--\w", r.stdout + r.stderr):
            return f"{where}: {' '.join(argv)} -> exit {r.returncode}: {(r.stderr or r.stdout)[-400:]}"
        return None

    with concurrent.futures.ThreadPoolExecutor(2) as pool:      # two at a time: most of it is imports
        failed = [msg for msg in pool.map(check, sorted(checks.items())) if msg]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("doc", [d for d in DOCS if any(b[0] == d and b[2] and not is_help(b[2])
                                                        for b in shell_blocks())])
def test_run_blocks(doc, scratch, shims):
    """The file's run blocks, in order, in one bash session in the scratch root; the first failure is named."""
    blocks = [(line, text) for f, line, marker, text in shell_blocks() if f == doc and marker and not is_help(marker)]
    script = "set -euo pipefail\n" + "".join(f"echo '@@ {doc}:{line}' >&2\n{text}\n" for line, text in blocks)
    r = subprocess.run(["bash", "-c", script], cwd=scratch, env=_env(shims), capture_output=True, text=True,
                       timeout=600)
    where = re.findall(r"^@@ (\S+)$", r.stderr, re.M)
    assert r.returncode == 0, f"{where[-1] if where else doc}: exit {r.returncode}\n{r.stderr[-3000:]}"
    assert len(where) == len(blocks)


def test_readme_test_command_runs_this_file():
    """The README's CI command (between the test-command markers) runs pytest on the folder holding this test."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = readme.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    command = [line for line in block.strip().split("\n") if not line.startswith(("<!--", "```"))]
    assert len(command) == 1
    words = shlex.split(command[0].split("&& python -m pytest", 1)[1])
    assert words[-1] == "tests" and os.path.dirname(os.path.abspath(__file__)) == os.path.join(ROOT, "tests")
    assert not {"--ignore", "-k", "--deselect", "-m"} & set(words)
    assert len(readme.split("\n")) <= 201                                  # README.md: at most 200 lines


def _anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_guides_exist_and_links_resolve():
    """docs/ holds one guide per topic, and every relative link in the docs names a file and heading that exist."""
    assert {"data.md", "training.md", "evaluation.md", "conversion.md", "scaling.md", "troubleshooting.md",
            "results.md", "architecture.md"} <= set(os.listdir(os.path.join(ROOT, "docs")))
    anchors, links = {}, []
    for rel in DOCS:
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)          # no headings or links in code
        anchors[rel] = {_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
        links += [(rel, target) for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]
    assert len(links) >= 20
    broken = []
    for rel, target in links:
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(rel), path)) if path else rel
        if not os.path.exists(os.path.join(ROOT, dest)) or (anchor and anchor not in anchors.get(dest, set())):
            broken.append(f"{rel}: {target}")
    assert not broken, broken
