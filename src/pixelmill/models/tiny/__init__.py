"""pixelmill-tiny: the small text-to-image model shipped inside the package.

The weights live in :data:`WEIGHTS_DIR` (a diffusers FLUX folder) and were
trained from scratch on the procedural scenes of :mod:`.scenes`
(``training/train_tiny.py``).  Load them like any FLUX model::

    DiffusionPipeline.from_pretrained(WEIGHTS_DIR, local_files_only=True)
"""

from __future__ import annotations

import json
from pathlib import Path

#: The shipped diffusers folder of pixelmill-tiny.
WEIGHTS_DIR: Path = Path(__file__).resolve().parents[1] / "weights" / "pixelmill-tiny"


def model_defaults(folder: Path = WEIGHTS_DIR) -> dict:
    """The folder's ``pixelmill.json``: default_steps, default_guidance, trained_size, vocabulary."""
    return json.loads((Path(folder) / "pixelmill.json").read_text())
