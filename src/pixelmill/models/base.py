"""The contract every image backend fulfils.

Backends are plain Python: no web framework, no database.  The engine calls
``generate`` on a worker thread and passes a :class:`StepControl` that carries
progress out and cancellation in, cooperatively, at step boundaries.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

from PIL import Image

from pixelmill.models import threads


class GenerationCancelled(Exception):
    """Raised inside a backend when its StepControl says the run was cancelled."""


class DeadlineExceeded(GenerationCancelled):
    """Raised when a run passes its deadline (a cancel with a different reason)."""


@dataclass
class StepControl:
    """Progress reporting and cooperative cancellation for one node run.

    ``report(fraction)`` is called by the backend after every step (0..1).
    ``check()`` raises GenerationCancelled once ``cancel()`` was called.
    With ``previews`` > 0, a backend that can decode its intermediate state
    calls ``preview(index, images)`` up to that many times, after the steps
    :meth:`preview_steps` picks (a backend that cannot simply never calls it).
    """

    on_progress: Callable[[float], None] | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None  # time.monotonic() value
    client_deadline: bool = False  # ``deadline`` is the client's run deadline (not the server's node timeout)
    previews: int = 0
    on_preview: Callable[[int, list[Image.Image]], None] | None = None

    def report(self, fraction: float) -> None:
        threads.step()  # the thread count may change between steps (see pixelmill.models.threads)
        if self.on_progress is not None:
            self.on_progress(max(0.0, min(1.0, float(fraction))))

    def preview_steps(self, total: int) -> list[int]:
        """The 0-based steps (of ``total``) after which to make previews: spread evenly, never the last step.

        Fewer than ``previews`` when there are too few steps to spread them over.
        """
        if self.previews <= 0 or total < 2:
            return []
        n = self.previews
        return sorted({min(total - 2, max(0, round(total * k / (n + 1)) - 1)) for k in range(1, n + 1)})

    def preview(self, index: int, images: list[Image.Image]) -> None:
        if self.on_preview is not None:
            self.on_preview(index, images)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise GenerationCancelled("cancelled")
        if self.deadline is not None:
            import time

            if time.monotonic() > self.deadline:
                raise DeadlineExceeded("deadline exceeded")


@dataclass(frozen=True)
class TextToImageRequest:
    prompt: str
    width: int = 1024
    height: int = 768
    steps: int | None = None  # None: the model's default
    guidance: float | None = None  # None: the model's default
    seed: int = 0
    num_images: int = 1
    negative_prompt: str | None = None
    init_image: Image.Image | None = None  # image-to-image / editing when the model allows
    strength: float = 0.6
    #: Inpainting with ``init_image``: white (255) = repaint, black (0) = keep; grey blends.
    mask_image: Image.Image | None = None
    #: More reference images after ``init_image`` (FLUX.2 multi-reference: ``input_image_2`` ...).
    #: Pipelines that take a list of images (FLUX.2) get them all; img2img pipelines start from ``init_image``.
    reference_images: tuple[Image.Image, ...] = ()
    #: LoRAs of the model's catalog entry to apply, with their scales, as (name, scale) pairs.
    loras: tuple[tuple[str, float], ...] = ()


class TextToImageBackend(Protocol):
    """A loaded text-to-image model."""

    def generate(self, request: TextToImageRequest, control: StepControl) -> list[Image.Image]:
        """Return ``request.num_images`` images of ``request.width`` x ``request.height``.

        Same request (seed included) -> same pixels.  Must call ``control.report``
        after each denoising step and ``control.check()`` at step boundaries.
        """
        ...
