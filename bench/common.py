"""Helpers shared by the benchmark scripts: timing and peak-memory measurement."""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turn (A B A B …) so machine noise hits both alike."""
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name] += timed(fn, 1)
    return {name: statistics.median(values) for name, values in samples.items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def short_distillation_config(output_dir: str, steps: int, batch: int, max_length: int):
    """The quality benchmarks' fixed budget: packed text, LR 5e-4 cosine, the same for every student."""
    from hf_minitron.distillation import DistillationConfig

    return DistillationConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=5e-4,
        warmup_steps=max(1, steps // 20),
        lr_scheduler_type="cosine",
        max_length=max_length,
        packing=True,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to=[],
        logging_steps=steps,
        seed=0,
        disable_tqdm=True,
    )
