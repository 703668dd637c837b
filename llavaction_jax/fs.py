"""The one filesystem layer for run outputs (the training workdir) and data globs: tf.io.gfile.

tf.io.gfile is what the TFRecord reader already lists and opens remote files with, and it serves every scheme
TensorFlow registers: local paths, `file://`, `gs://` (and `s3://`, `hdfs://` where TF has the plugin), and `ram://`
(TF's in-memory filesystem, which the tests use as an offline non-local scheme). A `file://` URL is turned into its
plain path first (`normalize`), so local runs keep using the OS and Orbax (whose epath layer knows no `file://`).
"""
import os
import posixpath
import shutil
import tensorflow as tf

from llavaction_jax.cli import UserError

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
    """`normalize(path)`, or a UserError when no filesystem of this TF build serves its scheme."""
    path = normalize(path)
    if is_url(path):
        try:
            tf.io.gfile.exists(path)
        except tf.errors.UnimplementedError:
            raise UserError(f"no filesystem for the scheme {scheme(path)}://", where,
                            "a local path, file://... or a scheme tf.io.gfile serves (gs://, ...)") from None
    return path


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


def atomic_write(path: str, data) -> None:
    """Readers see the old file or the whole new one. Where rename is atomic (local, ram://) a temp file is
    renamed over `path`; an object store's rename is copy + delete, so there the final name is written once:
    an object becomes visible only when its upload completes, which is the same guarantee."""
    mode = "wb" if isinstance(data, bytes) else "w"
    if scheme(path) in ("", "ram"):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open_file(tmp, mode) as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    else:
        with open_file(path, mode) as f:
            f.write(data)


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

