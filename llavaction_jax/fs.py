"""The one filesystem layer for run outputs (the training workdir, exports, eval outputs) and data globs:
tf.io.gfile.

tf.io.gfile is what the TFRecord reader already lists and opens remote files with, and it serves every scheme
TensorFlow registers: local paths, `file://`, `gs://` (and `s3://`, `hdfs://` where TF has the plugin), and `ram://`
(TF's in-memory filesystem, which the tests use as an offline non-local scheme). A `file://` URL is turned into its
plain path first (`normalize`), so local runs keep using the OS and Orbax (whose epath layer knows no `file://`).

Outputs go through `check_output` (a path with a scheme never becomes a local folder `./gs:/...`), whole
directories through `staged_dir` (written aside, then swapped in: readers and a failed write never see half of
one, as Orbax commits a checkpoint), single files through `atomic_path` / `atomic_write` (the same for one file)
and some files of a directory through `staged_files` (each put in place whole).
"""
import contextlib
import os
import posixpath
import shutil
import tempfile

import tensorflow as tf

from llavaction_jax.cli import UserError
from llavaction_jax.data import atomic

_FILE = "file://"


def is_url(path: str) -> bool:
    return "://" in str(path)


def scheme(path: str) -> str:
    """'gs' for gs://b/x, '' for a local path."""
    path = str(path)
    return path.split("://", 1)[0] if is_url(path) else ""


def normalize(path: str) -> str:
    """`file:///x` -> `/x`; any other path or URL unchanged."""
    path = str(path)
    return path[len(_FILE):] if path.startswith(_FILE) else path


def join(base: str, *parts: str) -> str:
    # URLs always use '/', whatever the OS separator.
    return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def check_supported(path: str, where: str) -> str:
    """`normalize(path)`, or a UserError when no filesystem of this TF build serves its scheme, or the remote
    store cannot be reached (gs:// without credentials or network: one line, not TensorFlow's traceback)."""
    path = normalize(path)
    if is_url(path):
        try:
            tf.io.gfile.exists(path)
        except tf.errors.UnimplementedError:
            raise UserError(f"no filesystem for the scheme {scheme(path)}://", where,
                            "a local path, file://... or a scheme tf.io.gfile serves (gs://, ...)") from None
        except tf.errors.OpError as e:
            raise UserError(f"cannot reach {path} ({_first_line(e)})", where,
                            "a reachable location (for gs://: credentials, e.g. `gcloud auth application-default "
                            "login`, and network access)") from None
    return path


# In-memory (gone when the process exits): accepted for scratch work in tests, never for a result a user keeps.
VOLATILE_SCHEMES = ("ram",)


def check_output(path: str, where: str) -> str:
    """`check_supported(path)` for a destination the user keeps (an export, eval outputs): ram:// refused too."""
    if scheme(normalize(path)) in VOLATILE_SCHEMES:
        raise UserError(f"{scheme(path)}:// is in-memory and vanishes when the process exits", where,
                        "a local path, file://... or a persistent store such as gs://...")
    return check_supported(path, where)


def _first_line(err: "tf.errors.OpError") -> str:
    return " ".join(str(err.message).split())


def is_dir(path: str) -> bool:
    return tf.io.gfile.isdir(path)


def is_empty_dir(path: str) -> bool:
    return not tf.io.gfile.listdir(path)


def check_new_dir(path: str, where: str, overwrite: bool) -> str:
    """A destination directory for a whole new output: absent or empty, or (`overwrite`) anything but a file.
    Refuses as git does a non-empty work tree: the user's files are never merged into or replaced silently."""
    path = check_output(path, where)
    if not exists(path):
        return path
    if not is_dir(path):
        raise UserError("exists and is not a directory", where, "a new or empty directory")
    if not overwrite and not is_empty_dir(path):
        raise UserError("destination is not empty", where, "a new or empty directory, or --overwrite to replace "
                        "it (the old one stays whole until the new one is complete)")
    return path


@contextlib.contextmanager
def staged_dir(dst: str, writer: bool = True):
    """Yields a local directory to write the whole of `dst` into; on success it replaces `dst`, on an error
    (ENOSPC, a bad tensor, Ctrl-C) it is removed and `dst` is left as it was.

    A local `dst` is staged in a sibling (same filesystem: the swap is two renames); a URL `dst` in a local
    temp dir, copied up when complete (old objects deleted only after the copy). `writer`: False on the
    processes of a multi-process job that write nothing (they get the same sibling path, and no swap)."""
    dst = normalize(dst)
    if is_url(dst):
        stage = tempfile.mkdtemp(prefix="llavaction-stage-")
    else:
        dst = os.path.abspath(dst)
        parent, name = os.path.split(dst)
        stage = os.path.join(parent, f".{name}.incomplete")      # one name for every process of a job
        if writer:
            os.makedirs(parent, exist_ok=True)
            shutil.rmtree(stage, ignore_errors=True)             # left by an earlier killed write
            os.makedirs(stage)
    try:
        yield stage
    except BaseException:
        if writer or is_url(dst):
            shutil.rmtree(stage, ignore_errors=True)
        raise
    if not writer:
        return
    if is_url(dst):
        new = {os.path.relpath(os.path.join(r, f), stage).replace(os.sep, "/")
               for r, _, files in os.walk(stage) for f in files}
        copy_tree(stage, dst)
        shutil.rmtree(stage, ignore_errors=True)
        for root, _, files in tf.io.gfile.walk(dst):            # objects of the replaced output
            for f in files:
                full = join(root, f)
                if full[len(dst):].lstrip("/") not in new:
                    tf.io.gfile.remove(full)
        return
    old = None
    if os.path.lexists(dst):
        old = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
    os.rename(stage, dst)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def makedirs(path: str) -> None:
    tf.io.gfile.makedirs(path)


def exists(path: str) -> bool:
    return tf.io.gfile.exists(path)


def open_file(path: str, mode: str = "r"):
    """A file object: text modes 'r' / 'w' / 'a', binary with 'b'. Appending to an object store (gs://) rewrites
    the object at every flush (TF's GCS file); fine for the small logs written this way."""
    return tf.io.gfile.GFile(path, mode)


def read_text(path: str) -> str:
    with open_file(path, "r") as f:
        return f.read()


def publish(tmp: str, path: str) -> None:
    """Moves the complete local file `tmp` to `path` in one step readers can see: they find the old file or the
    whole new one. Locally a rename over `path`; to ram:// a copy aside, then a rename; to an object store
    (gs://) a copy to the final name (an object becomes visible only when its upload completes, the same
    guarantee; its rename would be copy + delete)."""
    path = normalize(path)
    if not is_url(path):
        os.replace(tmp, path)
        return
    if scheme(path) in VOLATILE_SCHEMES:
        aside = f"{path}.tmp-{os.getpid()}"
        tf.io.gfile.copy(tmp, aside, overwrite=True)
        tf.io.gfile.rename(aside, path, overwrite=True)
    else:
        tf.io.gfile.copy(tmp, path, overwrite=True)
    os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yields a local file path to write the whole of `path` to, with any writer (open(), safetensors, a video
    encoder); on success it is `publish`ed over `path`, on an error removed, and `path` is left as it was.
    `suffix`: the temp name's ending, for writers that choose the format by extension ('.mp4')."""
    path = normalize(path)
    if not is_url(path):
        with atomic.atomic_path(path, suffix) as tmp:      # the one local helper (the offline CLIs write through it too)
            yield tmp
        return
    fd, tmp = tempfile.mkstemp(prefix="llavaction-", suffix=suffix)
    os.close(fd)
    with atomic.removed_on_error(tmp):
        yield tmp
    publish(tmp, path)


def atomic_write(path: str, data) -> None:
    """Writes `data` (str, or bytes) to `path` atomically (`atomic_path`)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)


def copy_tree(src: str, dst: str) -> None:
    """Copies the local directory `src` into `dst` (any scheme), file by file."""
    if not is_url(dst):
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else join(dst, *rel.split(os.sep))
        makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), join(target, name), overwrite=True)



@contextlib.contextmanager
def staged_files(dst_dir: str):
    """Yields a local directory to write some files of `dst_dir` into (subfolders too). When the block ends
    without an error each file is put in place whole: locally renamed over its final name (the stage is a hidden
    folder inside `dst_dir`, so on the same filesystem), for a URL uploaded (an object appears only once its
    upload completes). On an error none is, and the stage is removed: every file of `dst_dir` is its old self or
    its whole new self, never half of one. Unlike staged_dir, the other files of `dst_dir` are kept (an eval
    report next to its predictions, a task next to its clips)."""
    dst_dir = normalize(dst_dir)
    if is_url(dst_dir):
        stage = tempfile.mkdtemp(prefix="llavaction-files-")
    else:
        os.makedirs(dst_dir, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=".incoming-", dir=dst_dir)
    try:
        yield stage
        for root, dirs, files in os.walk(stage):
            dirs.sort()
            rel = os.path.relpath(root, stage)
            target = dst_dir if rel == "." else join(dst_dir, *rel.split(os.sep))
            makedirs(target)
            for name in sorted(files):
                if is_url(dst_dir):
                    tf.io.gfile.copy(os.path.join(root, name), join(target, name), overwrite=True)
                else:
                    os.replace(os.path.join(root, name), os.path.join(target, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
