"""Messages from other packages that tell a user of this library nothing, turned down where they start.

- torchao, imported by transformers' quantizer registry, logs a warning for each optional compiled
  extension it cannot load on this machine (CUDA-only kernels on a CPU build, other Python versions);
  its pure-PyTorch code, which is what runs here, is unaffected.
- torch logs a deprecation when torchao registers enum types with pytree; harmless here.

Only these two loggers are raised to ERROR, before transformers is imported; real errors still show.
"""

from __future__ import annotations

import logging

QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_third_party_logs() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


quiet_third_party_logs()  # on import: hf_minitron/__init__.py imports this module first
