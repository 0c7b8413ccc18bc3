"""The pipeline's quiet log: other packages' per-map and per-load progress bars are off while a stage runs,
the Hub's download and upload bars stay, and every setting is as it was afterwards."""

import datasets
import huggingface_hub.utils as hub_utils
import pytest
import transformers.utils.logging as transformers_logging

from hf_minitron.quiet import library_progress_bars_off


def states():
    return (
        datasets.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
        not hub_utils.are_progress_bars_disabled(),
    )


@pytest.mark.parametrize("hub_on", [True, False])
def test_bars_off_inside_and_restored_after(hub_on):
    datasets.enable_progress_bars()
    transformers_logging.enable_progress_bar()
    if not hub_on:
        hub_utils.disable_progress_bars()
    before = states()
    try:
        with library_progress_bars_off():
            assert states() == (False, False, hub_on)
        assert states() == before
    finally:
        hub_utils.enable_progress_bars()
