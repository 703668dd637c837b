"""No tracked file may point at documents outside the repository (the development notes live next to it, not in it).

Where code relies on a fact from LLaVAction it states the fact and names the upstream file instead.
"""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Spelled in pieces so this file does not match itself.
FORBIDDEN = ("shared" + "/reference", ".." + "/shared")


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
        return [p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (e.g. an unpacked sdist): every file outside hidden and build folders.
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("build", "__pycache__")]
            files += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames]
        return files


def test_finds_the_files_it_checks():
    files = _tracked_files()
    assert "README.md" in files and "llavaction_jax/data/prompts.py" in files


@pytest.mark.parametrize("needle", FORBIDDEN)
def test_no_file_cites_documents_outside_the_repository(needle):
    hits = []
    for rel in _tracked_files():
        path = os.path.join(ROOT, rel)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        for lineno, line in enumerate(data.split(b"\n"), 1):
            if needle.encode() in line:
                hits.append(f"{rel}:{lineno}")
    assert not hits, f"{needle!r} cited in: {', '.join(hits)}"
