"""Named points where a crash test stops the process so it can be killed there (``HF_MINITRON_PAUSE_AT``).

Set ``HF_MINITRON_PAUSE_AT`` to one or more point names (comma-separated). When the process reaches
such a point it prints ``hf_minitron: paused at NAME (pid N)`` to stderr and sleeps until it is
killed, so a test can SIGKILL it at exactly that moment. The points are:

- ``stage:STAGE``: a pipeline stage's temporary folder exists, the stage has not started;
- ``save:PARENT/NAME``: an output folder is fully written beside ``PARENT/NAME`` but not yet renamed
  into place (``PARENT`` without its temporary suffix, e.g. ``distill/width``);
- ``checkpoint-weights:checkpoint-N``: a Trainer checkpoint's weights are written, its trainer state not yet;
- ``train-step:N``: optimizer step N is about to start (N - 1 steps done).

Unset (always, outside tests), every point is a dictionary lookup.
"""

from __future__ import annotations

import os
import sys
import time

ENVIRONMENT_VARIABLE = "HF_MINITRON_PAUSE_AT"


def active() -> bool:
    return bool(os.environ.get(ENVIRONMENT_VARIABLE))


def pause_point(name: str) -> None:
    wanted = os.environ.get(ENVIRONMENT_VARIABLE)
    if not wanted or name not in (part.strip() for part in wanted.split(",")):
        return
    print(f"hf_minitron: paused at {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
    while True:
        time.sleep(60)


def step_callback():
    """A TrainerCallback that offers ``train-step:N`` before every optimizer step."""
    from transformers import TrainerCallback

    class PauseBeforeStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            pause_point(f"train-step:{state.global_step + 1}")

    return PauseBeforeStep()
