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


def test_plots_quiet_with_a_font_cache_missing_matplotlib_fonts(tmp_path):
    """A font cache written by another, since deleted, environment lists none of matplotlib's bundled math
    fonts: the log axes of the importance plot then made matplotlib warn once per font ("findfont: ...")."""
    import os
    import subprocess
    import sys

    script = """
import sys
from pathlib import Path
import matplotlib
from matplotlib import font_manager
manager = font_manager.FontManager()
math_fonts = ("STIX", "cm")  # matplotlib's bundled math fonts; DejaVu stays
manager.ttflist = [font for font in manager.ttflist if not Path(font.fname).name.startswith(math_fonts)]
if sys.argv[1] == "stale":  # later processes read this cache
    font_manager.json_dump(manager, Path(matplotlib.get_cachedir()) / f"fontlist-v{manager.__version__}.json")
elif sys.argv[1] == "plot":
    import torch
    from hf_minitron.importance import ImportanceScores
    from hf_minitron.plots import plot_importance
    scores = ImportanceScores(
        heads=torch.rand(3, 4) + 0.01, neurons=torch.rand(3, 8) + 0.01, channels_per_layer=torch.rand(3, 6),
        block_importance=torch.rand(3),
    )
    plot_importance(scores, Path(sys.argv[2]) / "importance.png")
else:
    import matplotlib.pyplot as plt
    matplotlib.use("Agg")
    fig, ax = plt.subplots()
    ax.plot([1, 100], [1, 1000])
    ax.set_yscale("log")
    fig.savefig(Path(sys.argv[2]) / "plain.png")
"""
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}

    def stderr_of(mode):
        run = subprocess.run(
            [sys.executable, "-c", script, mode, str(tmp_path)], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stderr

    stderr_of("stale")
    assert "findfont" in stderr_of("plain")  # the cache really lacks the fonts: matplotlib alone warns
    assert "findfont" not in stderr_of("plot") and (tmp_path / "importance.png").stat().st_size > 0
