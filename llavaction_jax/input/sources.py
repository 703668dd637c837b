"""Training / evaluation sources: lists of glob patterns, and each host's share of a source's records.

Whole files go to hosts when the file count divides evenly by the process count (each host then scans only the
headers of its own files), otherwise every P-th record.
"""
import numpy as np

from llavaction_jax.input import recordio


def split_sources(files):
    """Sources as lists of glob patterns: 'a*,b*' -> [['a*'], ['b*']]; ['a*', 'b*'] -> same; [[...]] kept."""
    if isinstance(files, str):
        files = [p for p in files.split(",") if p.strip()]
    sources = [[s] if isinstance(s, str) else list(s) for s in files]
    if not sources:
        raise ValueError("no input files: set config.data.train_files or pass files=")
    return sources


def source_files(patterns):
    files = []
    for pattern in patterns:
        files.extend(recordio.expand_pattern(pattern))
    return files


def host_index(patterns, process_index, process_count, by_record=False):
    """This host's records of one source. File-level sharding when possible (each host scans only its files)."""
    files = source_files(patterns)
    if not by_record and len(files) % process_count == 0:
        return recordio.RecordIndex(files[process_index::process_count])
    full = recordio.RecordIndex(files)
    return full.subset(np.arange(process_index, len(full), process_count))
