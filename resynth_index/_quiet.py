"""Silence library chatter (loading bars, info logs) while our own code loads models."""

from __future__ import annotations

import threading
from contextlib import contextmanager

_LOCK = threading.Lock()


@contextmanager
def quiet_loading():
    """Disable diffusers' and transformers' progress bars and transformers' info logs for the duration,
    restoring their previous state (hub download bars are left alone)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    with _LOCK:
        was = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
        verbosity = transformers_logging.get_verbosity()
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        try:
            yield
        finally:
            transformers_logging.set_verbosity(verbosity)
            if was[0]:
                diffusers_logging.enable_progress_bar()
            if was[1]:
                transformers_logging.enable_progress_bar()
