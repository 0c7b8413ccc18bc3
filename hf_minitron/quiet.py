"""Messages from other packages that tell a user of this library nothing, turned down where they start.

- torchao, imported by transformers' quantizer registry, logs a warning for each optional compiled
  extension it cannot load on this machine (CUDA-only kernels on a CPU build, other Python versions);
  its pure-PyTorch code, which is what runs here, is unaffected.
- torch logs a deprecation when torchao registers enum types with pytree; harmless here.

Only these two loggers are raised to ERROR, before transformers is imported; real errors still show.

``library_progress_bars_off`` turns off the progress bars datasets draws for each map over a few hundred
rows and transformers for each model it loads or writes, while a pipeline stage runs: the runner prints
one line per stage and the trainers one per logging step, and dozens of finished bars in a log say nothing.
Downloads from and uploads to the Hub keep their bars.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_third_party_logs() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def library_progress_bars_off() -> Iterator[None]:
    import datasets
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    datasets_on = datasets.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    hub_on = not hub_utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()  # which turns off huggingface_hub's bars too:
    if hub_on:  # downloads and uploads, minutes long for a large model, keep theirs
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if not hub_on:
            hub_utils.disable_progress_bars()


quiet_third_party_logs()  # on import: hf_minitron/__init__.py imports this module first
