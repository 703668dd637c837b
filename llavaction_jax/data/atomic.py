"""One local file written whole or not at all: the writer fills a temporary sibling, which is renamed over the
final name on success and removed on an error, so a reader finds the old file or the whole new one.

Free of JAX and TensorFlow: the offline data CLIs write through it, and llavaction_jax.fs (which adds URLs
through tf.io.gfile) uses it for local paths.
"""
import contextlib
import os


@contextlib.contextmanager
def removed_on_error(tmp: str):
    """Runs the block that writes the local file `tmp`; on any error (an interrupt too) `tmp` is removed, so no
    half-written temporary is left behind, and the error goes on."""
    try:
        yield tmp
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yields a local path to write the whole of `path` to, with any writer (open(), a TFRecord writer, a video
    encoder). `suffix`: the temporary name's ending, for writers that choose the format by extension ('.mp4')."""
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"      # a sibling: same filesystem, so the rename is atomic
    with removed_on_error(tmp):
        yield tmp
    os.replace(tmp, path)


def atomic_write(path: str, text: str) -> None:
    """Writes the text `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
