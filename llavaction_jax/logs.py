"""Quiet logs by default in every CLI; `--verbose` (or LLAVACTION_VERBOSE=1) brings everything back.

Dropped unless verbose:
- TensorFlow's native start-up banners (oneDNN, CPU instructions, absl's "before InitializeLog"): TF 2.21 prints
  them through absl's C++ logger at load time, whatever TF_CPP_MIN_LOG_LEVEL says, so `import llavaction_jax`
  installs an import hook that runs `import tensorflow` with the process's stderr (fd 2) captured and writes
  back every other line;
- JAX's "Unable to initialize backend 'tpu'" (and the other backends it probes) on a machine without them;
- Orbax's "Metadata file does not exist: .../_CHECKPOINT_METADATA" on every restore of a step or params dir
  (older Orbax writers, and our params items, save none; Orbax then reads the tree metadata instead);
- Orbax's ~100 INFO lines per checkpoint save;
- the tracebacks of Orbax's log lines about a full disk (the CLI reports it as one `error:` line).
Warnings and errors of every library stay.
"""
import errno
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile

from absl import logging as absl_logging

VERBOSE_ENV = "LLAVACTION_VERBOSE"
_JAX_BACKEND_LOGGER = "jax._src.xla_bridge"       # logs each backend it cannot start
_ORBAX_NO_METADATA = "Metadata file does not exist"


def verbose_requested(argv=None) -> bool:
    argv = sys.argv if argv is None else argv
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0") or "--verbose" in argv


_TF_BANNER = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                        rb"|I\d{4} [\d:. ]+\d+ (port|cpu_feature_guard)\.cc:\d+\] .*"
                        rb"|To enable the following instructions: .*)$")


class _QuietTensorFlowLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with fd 2 captured; writes back what is not a start-up banner."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [line for line in captured.read().splitlines(keepends=True)
                        if not _TF_BANNER.match(line.rstrip(b"\n"))]
                if kept:
                    os.write(2, b"".join(kept))


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietTensorFlowLoader(spec.loader)
        return spec


def quiet_native_logs() -> None:
    """Before TensorFlow loads: its C++ INFO lines off (warnings and errors stay) and its start-up banners
    dropped, unless verbose (or the user set TF_CPP_MIN_LOG_LEVEL, which is then left as it is)."""
    if verbose_requested() or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


def _is_noise(record: logging.LogRecord) -> bool:
    path = record.pathname or ""
    if f"{os.sep}orbax{os.sep}" in path:
        return record.levelno < logging.WARNING or str(record.msg).startswith(_ORBAX_NO_METADATA)
    return False


def _is_disk_full(record: logging.LogRecord) -> bool:
    err = record.exc_info[1] if record.exc_info else None
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _drop_noise(record: logging.LogRecord) -> bool:
    if _is_noise(record):
        return False
    if f"{os.sep}orbax{os.sep}" in (record.pathname or "") and _is_disk_full(record):
        # A full disk during an async save: each Orbax thread logs it with a traceback; the CLI reports it as
        # one `error:` line (llavaction_jax.cli), so its log lines keep only their message.
        record.exc_info, record.exc_text = None, None
    return True


def use_console_format(fmt: str) -> None:
    """A CLI's root log format on stderr (level WARNING). It replaces only a handler that logging.basicConfig()
    put there by itself (absl.logging calls it at its first log line when the root has none, and Orbax logs at
    import), never a host's own handlers: pytest's log capture, when a test calls a CLI in-process, stays."""
    root = logging.getLogger()
    implicit = [h for h in root.handlers if type(h) is logging.StreamHandler
                and getattr(h.formatter, "_fmt", None) == logging.BASIC_FORMAT]
    if len(implicit) == len(root.handlers):
        logging.basicConfig(level=logging.WARNING, format=fmt, force=True)


def configure(verbose: bool = False) -> None:
    """A CLI's logging: the noise above off unless `verbose` (argparsing calls it after parsing). Idempotent."""
    absl_logger = absl_logging.get_absl_logger()
    orbax_logger = logging.getLogger("orbax")
    if verbose:
        os.environ[VERBOSE_ENV] = "1"          # for child processes (input workers, subprocess checks)
        for logger in (absl_logger, orbax_logger):
            logger.removeFilter(_drop_noise)
        logging.getLogger(_JAX_BACKEND_LOGGER).setLevel(logging.NOTSET)
        return
    for logger in (absl_logger, orbax_logger):
        if _drop_noise not in logger.filters:
            logger.addFilter(_drop_noise)
    logging.getLogger(_JAX_BACKEND_LOGGER).setLevel(logging.WARNING)
