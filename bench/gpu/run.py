"""hf_minitron on one GPU, in one command: distillation step vs TRL's GKD loss, logit KL vs Liger and TRL,
importance vs a plain forward, pruning, prefill and decode of teacher vs students.

    python bench/gpu/run.py --out bench/out/gpu              # ≤ 5 minutes on an H200 (--budget 270 s)
    python bench/gpu/run.py --out /tmp/gpu-tiny --tiny       # every section at toy sizes, CPU is enough

On a machine without network access where trl and datasets are missing, first bring the wheels that
``bench/gpu/wheels.sh`` downloads (into ``.whl/`` at the repository root) and install them next to
the repository:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD

Models are randomly initialised from Llama configs (vocabulary 128256, random token ids: no
tokenizer, no downloads). The sections run in a worker process, one after another, each in its own
time box (its cap, at most what is left of ``--budget``); a section that fails or runs out of time
is marked in the table and the rest still run. ``results.md`` and ``results.json`` in ``--out`` are
rewritten after every measurement, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan import FULL, SECTION_NAMES, SECTIONS, TINY, section
from protocol import parse
from report import Report

HERE = Path(__file__).resolve().parent
STARTUP_SECONDS = 90  # importing torch, transformers, trl and the first CUDA context
BETWEEN_SECTIONS = 30  # freeing memory after a section


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.md, results.json and worker.log")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds for all sections together")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a smoke run of every section (CPU is enough)")
    parser.add_argument("--sections", default=",".join(SECTION_NAMES), help="comma-separated subset, in this order")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(args.sections) - set(SECTION_NAMES))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTION_NAMES)}")
    return args


# -- worker ------------------------------------------------------------------------------------------------


def worker(args) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    sys.path.insert(0, str(HERE.parents[1]))  # the repository, for hf_minitron when not installed
    from protocol import Rows, send, short_error

    send("alive")
    import model_sections
    import torch
    import train_sections
    import transformers
    from workloads import free, make_setup

    setup = make_setup(args.tiny)
    env = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name, distribution in (("trl", "trl"), ("datasets", "datasets"), ("liger_kernel", "liger-kernel")):
        try:
            module = __import__(name)
            try:
                env[name] = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                env[name] = getattr(module, "__version__", "(version unknown)")
        except Exception as error:  # missing, or failing to import against what is installed
            env[name] = f"unavailable ({short_error(error)})"
    env["device"] = torch.cuda.get_device_name() if setup.cuda else "CPU"
    send("env", env=env)
    runners = {
        "kl": train_sections.kl_section,
        "step_1b": train_sections.step_1b_section,
        "step_8b": train_sections.step_8b_section,
        "step_options": train_sections.step_options_section,
        "importance": model_sections.importance_section,
        "prune": model_sections.prune_section,
        "inference": model_sections.inference_section,
    }
    sizes = TINY if args.tiny else FULL
    for name in args.sections:
        send("start", section=name)
        start = time.perf_counter()
        try:
            runners[name](setup, Rows(name, on_error=free), sizes)
        except Exception as error:
            import traceback

            traceback.print_exc()
            send("section_error", section=name, text=short_error(error))
        free()
        send("end", section=name, seconds=time.perf_counter() - start)


# -- orchestrator ------------------------------------------------------------------------------------------


def _pump(stream, lines: queue.Queue, log, echo) -> None:
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", "replace").rstrip("\n")
        lines.put(text)
        if log is not None and parse(text) is None:
            log.write(text + "\n")
            log.flush()
            if echo:
                print(text, file=sys.stderr)
    lines.put(None)


class Orchestrator:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = (self.out / "worker.log").open("a", encoding="utf-8")
        self.deadline = time.monotonic() + args.budget
        self.caps = {s.name: (s.tiny_cap if args.tiny else s.cap) for s in SECTIONS}
        mode = "toy sizes (--tiny)" if args.tiny else "full sizes"
        header = [f"Mode: {mode}; budget {args.budget:.0f} s; sections in order: {', '.join(args.sections)}."]
        self.report = Report(self.out, [section(n) for n in args.sections], header)
        self.report.write()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self) -> Report:
        pending = list(self.args.sections)
        while pending:
            if self.left() < 5:
                for name in pending:
                    self.report.close_section(name, "Not run: the time budget was spent.", "not run (budget spent)")
                break
            started = self._run_worker(pending)
            if not started:  # the worker died or hung before its first section: do not retry forever
                for name in pending:
                    self.report.close_section(name, "Not run: the worker did not start (see worker.log).", "not run")
                break
        self.report.write()
        return self.report

    def _run_worker(self, pending: list[str]) -> bool:
        command = [sys.executable, str(HERE / "run.py"), "--worker", "--out", str(self.out)]
        command += ["--sections", ",".join(pending), "--budget", str(self.args.budget)]
        command += ["--tiny"] if self.args.tiny else []
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threads = [
            threading.Thread(target=_pump, args=(process.stdout, lines, self.log, False), daemon=True),
            threading.Thread(target=_pump, args=(process.stderr, queue.Queue(), self.log, True), daemon=True),
        ]
        for thread in threads:
            thread.start()
        current, started = None, False
        limit = time.monotonic() + min(STARTUP_SECONDS, self.left())
        while True:
            try:
                text = lines.get(timeout=max(0.1, limit - time.monotonic()))
            except queue.Empty:
                self._kill(process)
                if current is not None:
                    note = f"Timed out after {self.caps[current]:.0f} s (its time box); rows measured before stay."
                    self.report.close_section(current, note, "not measured (section timed out)")
                    pending.remove(current)
                    print(f"[{current}] timed out", file=sys.stderr)
                break
            if text is None:  # the worker exited
                code = process.wait()
                if current is not None:
                    note = f"The worker exited (code {code}) during this section; see worker.log."
                    self.report.close_section(current, note, "not measured (worker exited)")
                    pending.remove(current)
                break
            event = parse(text)
            if event is None:
                continue
            kind = event["event"]
            if kind == "env":
                self.report.env = event["env"]
            elif kind == "start":
                current, started = event["section"], True
                cap = min(self.caps[current], self.left())
                limit = time.monotonic() + cap
                print(f"[{current}] started (time box {cap:.0f} s)", file=sys.stderr)
            elif kind == "cells":
                self.report.set_cells(event["section"], event["row"], event["cells"])
            elif kind == "status":
                self.report.set_status(event["section"], event["row"], event["text"])
            elif kind == "section_error":
                self.report.close_section(event["section"], f"Failed: {event['text']}", "not measured (section failed)")
            elif kind == "end":
                name = event["section"]
                if name not in self.report.section_notes:
                    self.report.close_section(name, f"Ran in {event['seconds']:.1f} s.", "not measured")
                pending.remove(name)
                current = None
                limit = time.monotonic() + min(BETWEEN_SECTIONS, self.left())
                print(f"[{name}] done in {event['seconds']:.1f} s", file=sys.stderr)
            self.report.write()
        self._kill(process)
        return started

    @staticmethod
    def _kill(process) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(argv=None) -> None:
    args = _arguments(argv)
    if args.worker:
        worker(args)
        return
    report = Orchestrator(args).run()
    print(report.markdown())
    print(f"Written: {Path(args.out) / 'results.md'} and results.json", file=sys.stderr)


if __name__ == "__main__":
    main()
