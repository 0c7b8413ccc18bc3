"""`python -m hf_minitron.cli ...` (what `accelerate launch -m hf_minitron.cli` runs)."""

import sys

from . import main

sys.exit(main())
