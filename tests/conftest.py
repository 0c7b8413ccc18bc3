"""Fixtures: the real SmolLM2 teacher, loaded once per session; a summary of measured figures."""

from __future__ import annotations

import pytest
import torch

from helpers import VOCAB

MEASUREMENTS: list[str] = []


@pytest.fixture(scope="session")
def smollm2():
    """The built-in real teacher (SmolLM2-135M-Instruct, dequantized from GGUF) and its tokenizer."""
    from hf_minitron import builtin_teacher

    return builtin_teacher()


@pytest.fixture(scope="session")
def teacher_scores(smollm2):
    """Importance of the built-in teacher on a little built-in text, computed once."""
    from hf_minitron import estimate_importance

    model, tokenizer = smollm2
    return estimate_importance(
        model, tokenizer, "builtin:python-docs", num_samples=8, seq_len=128, batch_size=4, progress=False
    )


@pytest.fixture
def record_measurement():
    """Tests that measure something (perplexity, sizes) report it in the run's summary."""
    return MEASUREMENTS.append


@pytest.fixture
def input_ids():
    return torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
