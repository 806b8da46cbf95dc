"""pixelmill: a self-hosted image-generation API platform."""

import os as _os

__version__ = "0.1.0"

# PyTorch's OpenMP threads (libgomp) spin for about 6 ms after every parallel operation before
# they sleep.  Within a step the next operation comes sooner than that, so spinning longer buys
# nothing, but after a generation it holds a core while the output is checked and encoded, and
# beside a second generation it takes that generation's core.  At 20,000 rounds they sleep after
# about 0.3 ms; a direct loop measured no slower (bench/throughput.py).  Read when torch loads,
# so set here, before anything of pixelmill imports it; an operator's own value is kept.
_os.environ.setdefault("GOMP_SPINCOUNT", "20000")
