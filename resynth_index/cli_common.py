"""What every ``rindex`` command shares: the common options, the config and thread policy, the engine over an
index (readers need an existing one; writers lock before any model loads), and clean error exits."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .config import MAX_THREADS, default_index_dir
from .errors import RindexError


def _index_option(f):
    return click.option(
        "--index",
        "index",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Index directory (default: $RINDEX_INDEX, else ./cache).",
    )(f)


def _config_option(f):
    return click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="TOML config (default: the embedded offline zoo).",
    )(f)


def _device_option(f):
    return click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (overrides the config).")(f)


def _progress_option(f):
    return click.option(
        "--progress/--no-progress",
        "progress",
        default=None,
        help="Progress bar with ETA on stderr (default: only when stderr is a terminal).",
    )(f)


def _threads_option(f):
    return click.option(
        "--threads",
        type=click.IntRange(min=0, max=MAX_THREADS),
        default=None,
        help="CPU threads for torch, FAISS and BLAS (0: automatic, see README 'Threads'; default: the config's).",
    )(f)


def _configured(config, threads):
    """The config with ``--threads`` over its ``threads`` key, the thread policy applied before any model loads
    (a bad config exits 2 here)."""
    import dataclasses

    from .config import load_config
    from .devices import apply_thread_policy

    try:
        cfg = load_config(config)
        if threads is not None:
            cfg = dataclasses.replace(cfg, threads=threads)
        apply_thread_policy(cfg.threads)
    except _CLEAN_ERRORS as exc:
        _fail(exc)
    return cfg


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _engine(config, index, device, readonly=False):
    """The engine over ``index``. A reader needs an existing index (a mistyped --index is an error, not a new
    empty index); a writer takes the writer lock before any model loads, so that a second writer is refused
    at once."""
    from .attribution.engine import Attributor
    from .store.index_dir import check_index_dir

    index = index if index is not None else default_index_dir()
    if readonly:
        check_index_dir(index, writer=False)
    engine = Attributor(config, index=index, device=device, readonly=readonly)
    try:
        engine.lock_for_writing()
    except BaseException:
        engine.close()
        raise
    return engine


def _fail(exc: BaseException) -> None:
    if isinstance(exc, OSError):
        from .store.index_dir import describe_os_error

        exc = describe_os_error(exc)
    elif type(exc).__module__.split(".")[0] == "lmdb":  # the index's storage refused: a full or read-only disk
        exc = f"the index's storage failed: {type(exc).__name__}: {exc}"
    click.echo(f"rindex: error: {_printable(str(exc))}", err=True)
    sys.exit(2)


#: errors a command reports as ``rindex: error: ...`` (exit 2) instead of a traceback
_CLEAN_ERRORS: tuple[type[BaseException], ...] = (RindexError, OSError)
try:
    import lmdb

    _CLEAN_ERRORS += (lmdb.Error,)
except ImportError:  # pragma: no cover - lmdb is a dependency
    pass


def _printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, carriage returns) shown as ``?``: a prompt read
    from a file must not drive the terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else "?" for ch in text)
