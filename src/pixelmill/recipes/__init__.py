"""Recipes: small typed requests turned into execution graphs.

Every HTTP dialect translates its wire fields into one of these and submits
``recipe.graph()``; none writes a node dict itself.  Strength defaults and the
mapping of graph problems back to a request parameter live here, once.

* :class:`Generate` — text to image.
* :class:`ImageToImage` — a new image that keeps the input's layout (``strength``: how far it may move).
* :class:`Inpaint` — repaint where a mask says (or where the image is transparent).
* :class:`Outpaint` — add margins around an image and generate only them.
* :class:`Variation` — an image like the input, without a prompt.
* :class:`Chain` — any of these followed by processing steps (upscale, resize, convert, ...).
"""

from pixelmill.recipes.generation import (
    FULL_REPAINT,
    IMAGE_TO_IMAGE_STRENGTH,
    INPAINT_STRENGTH,
    REFERENCE_FOLLOW,
    Chain,
    Generate,
    ImageRef,
    ImageToImage,
    Inpaint,
    Outpaint,
    Recipe,
    Step,
    Variation,
    strength_from_follow,
)
from pixelmill.recipes.problems import ProblemParam, first_problem, problem_params

__all__ = [
    "FULL_REPAINT",
    "IMAGE_TO_IMAGE_STRENGTH",
    "INPAINT_STRENGTH",
    "REFERENCE_FOLLOW",
    "Chain",
    "Generate",
    "ImageRef",
    "ImageToImage",
    "Inpaint",
    "Outpaint",
    "ProblemParam",
    "Recipe",
    "Step",
    "Variation",
    "first_problem",
    "problem_params",
    "strength_from_follow",
]
