"""Text-to-image (and image-to-image) with Hugging Face diffusers pipelines.

:class:`DiffusersBackend` loads whatever pipeline a diffusers folder or repo
declares in its ``model_index.json`` (FLUX.1 dev/schnell, FLUX.2, Stable
Diffusion 1.x/2.x, SDXL, SD3 ...) and runs it with the request's size, steps,
guidance and seed.  Per-step progress and cancellation go through
``callback_on_step_end``; a cancelled run stops at the next step boundary.
Previews (partial images) are the sampler's latents decoded after chosen steps.

Seeds are drawn from CPU generators, one per image (``seed + i``), so the same
request gives the same starting noise on any device.
"""

from __future__ import annotations

import copy
import inspect
import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image

from pixelmill.models.base import StepControl, TextToImageRequest
from pixelmill.models.catalog import ModelSpec

log = logging.getLogger(__name__)


class _TinyVaeTypeHint(logging.Filter):
    """Drop diffusers' "Expected types for vae" warning for ``AutoencoderTiny``.

    FluxPipeline's type hints name ``AutoencoderKL`` only, yet it runs an
    ``AutoencoderTiny`` (TAESD; ``taef1`` for FLUX, and pixelmill-tiny's VAE)
    as it is; the warning would only alarm operators on every load.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Expected types for vae") and "AutoencoderTiny" in message)


logging.getLogger("diffusers.pipelines.pipeline_utils").addFilter(_TinyVaeTypeHint())

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_SEED_MASK = 0xFFFF_FFFF_FFFF_FFFF
#: how often a generation waiting for a seat looks at its cancel and deadline
SEAT_CHECK_S = 0.2


class ModelLoadError(RuntimeError):
    """A model's weights could not be found or loaded."""


def resolve_device(requested: str) -> str:
    """The torch device for a catalog ``device`` value ("auto": cuda, then mps, then cpu)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but no CUDA device is available")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("device 'mps' requested but MPS is not available")
    return requested


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    """The torch dtype for a catalog ``dtype`` value ("auto": bf16 on cuda, fp16 on mps, fp32 on cpu)."""
    if requested != "auto":
        return _DTYPES[requested]
    return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device, torch.float32)


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with diffusers
        return False


def _dtype_keyword() -> str:
    """``dtype`` on diffusers versions that renamed it, ``torch_dtype`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _call_parameters(pipe: Any) -> tuple[set[str], bool]:
    """Names accepted by ``pipe.__call__`` and whether it takes ``**kwargs``."""
    params = inspect.signature(pipe.__call__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return set(params), accepts_any


class DiffusersBackend:
    """One catalog model served through a diffusers pipeline kept in memory.

    ``load()`` is idempotent and thread-safe; ``generate`` loads on first use.

    Generations run side by side, one per *seat*: a pipeline object of its own (its own
    scheduler, tokenizers and other small stateful parts, copied) over the same weights
    (every ``torch.nn.Module`` shared, nothing copied), so two worker threads on two
    cores make two images at once instead of queueing on one pipeline.  Seats are made
    when more callers than seats arrive and kept for the next ones.  Only on the CPU and
    without speed options (a step cache keeps state in the shared modules; a compiled
    module is compiled once): elsewhere one generation runs at a time and others wait.
    A change of the active LoRAs (they live in the shared modules) waits until no
    generation runs, and generations that want other LoRAs wait until it is made.
    """

    def __init__(self, spec: ModelSpec) -> None:
        if spec.backend != "diffusers":
            raise ValueError(f"model {spec.name!r} uses backend {spec.backend!r}, not 'diffusers'")
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.dtype = resolve_dtype(spec.dtype, self.device)
        self._pipe: Any = None
        self._load_lock = threading.Lock()
        self._seats = threading.Condition()  # guards everything below
        self._free: list[Any] = []  # idle seats (pipelines over the shared weights)
        self._made = 0  # seats made for the loaded pipeline (the first is the pipeline itself)
        self._running = 0  # generations on a seat now
        self._changing = False  # the one running generation is still setting its LoRAs: nobody joins yet
        self._waiting = 0  # callers waiting for a seat (while any wait, nobody joins: a LoRA change is not starved)
        self._active: tuple[tuple[str, float], ...] | None = ()  # the LoRAs the shared modules have active (None: unknown)
        self._siblings: dict[tuple[int, str], Any] = {}  # (id(seat), "img2img" | "inpaint") -> pipeline
        self._loras: OrderedDict[str, None] = OrderedDict()  # LoRA adapters loaded into the pipeline, LRU first
        self._loras_active = False
        self.speed_options: list[str] = []  # the catalog's speed options that applied on this device

    # -- loading -----------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """True once the pipeline is resident."""
        return self._pipe is not None

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline (loads it if needed)."""
        return self.load()

    def load(self) -> Any:
        """Load the pipeline onto the device once; later calls return it."""
        if self._pipe is not None:
            return self._pipe
        with self._load_lock:
            if self._pipe is None:
                self._pipe = self._load_pipeline()
        return self._pipe

    def unload(self) -> None:
        """Drop the pipeline (and free accelerator memory); the next use reloads it."""
        with self._load_lock, self._seats:
            self._seats.wait_for(lambda: self._running == 0)
            self._pipe = None
            self._free.clear()
            self._made = 0
            self._siblings.clear()
            self._active = ()
            self._loras.clear()
            self._loras_active = False
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def _load_pipeline(self) -> Any:
        from pixelmill.ops.logs import adopt_model_library_logs

        adopt_model_library_logs()  # before diffusers imports its pipelines (they log as they load)
        from diffusers import DiffusionPipeline

        spec = self.spec
        source = spec.resolved_path()
        if spec.is_local and not (Path(source) / "model_index.json").is_file():
            raise ModelLoadError(
                f"model {spec.name!r}: no diffusers pipeline at {source} (model_index.json missing)"
            )
        local_only = not spec.allow_download or _offline()
        log.info("loading model %s from %s on %s (%s)", spec.name, source, self.device, self.dtype)
        try:
            pipe = DiffusionPipeline.from_pretrained(
                source, local_files_only=local_only, **{_dtype_keyword(): self.dtype}
            )
        except Exception as exc:
            hint = "" if spec.is_local or not local_only else " (not in the local Hugging Face cache; downloads are off)"
            raise ModelLoadError(f"model {spec.name!r}: cannot load {source}{hint}: {exc}") from exc
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        from pixelmill.models.speed import apply_speed_options

        self.speed_options = apply_speed_options(pipe, spec, self.device)
        return pipe

    @property
    def side_by_side(self) -> bool:
        """Whether generations of this model run at once (see the class)."""
        return self.device == "cpu" and not self.speed_options

    @contextmanager
    def _seat(self, loras: tuple[tuple[str, float], ...], control: StepControl | None = None) -> Iterator[Any]:
        """A pipeline to generate on with ``loras`` active, held until the block ends.

        While it waits for one (another generation holds the only seat, or runs with other
        LoRAs), ``control``'s cancel and deadline still apply: they raise here."""
        while True:
            pipe = self.load()
            with self._seats:
                self._waiting += 1
                try:
                    # join the generations running with these LoRAs (where side by side is on and
                    # nobody else waits), or be alone, to change them
                    while not (
                        self._pipe is not pipe
                        or self._running == 0
                        or (self.side_by_side and loras == self._active and self._waiting == 1 and not self._changing)
                    ):
                        self._seats.wait(SEAT_CHECK_S)
                        if control is not None:
                            control.check()
                finally:
                    self._waiting -= 1
                if self._pipe is not pipe:  # unloaded while this caller waited: load it again
                    continue
                self._running += 1
                alone = self._running == 1
                if alone:  # nobody joins until the LoRAs are this caller's
                    self._changing = True
                if self._free:
                    seat = self._free.pop()
                elif self._made == 0:
                    seat, self._made = pipe, 1  # the first seat is the loaded pipeline itself
                else:
                    seat, self._made = None, self._made + 1
            break
        try:
            if seat is None:
                seat = self._new_seat(pipe)
            if alone:  # nobody else generates: the shared modules are this caller's to change
                applied = None  # a change that failed half-way matches no one's LoRAs
                try:
                    self._apply_loras(pipe, loras)
                    applied = loras
                finally:
                    with self._seats:
                        self._active = applied
                        self._changing = False
                        self._seats.notify_all()
            yield seat
        finally:
            with self._seats:
                self._running -= 1
                if seat is None:  # it could not be made: the next caller makes one
                    self._made -= 1
                elif self._pipe is pipe:
                    self._free.append(seat)
                self._seats.notify_all()

    def _new_seat(self, pipe: Any) -> Any:
        """Another pipeline over ``pipe``'s weights: its modules shared, its other parts (scheduler, tokenizers) copied."""
        components = {
            name: (part if part is None or isinstance(part, torch.nn.Module) else copy.deepcopy(part))
            for name, part in pipe.components.items()
        }
        seat = type(pipe)(**components)
        seat.set_progress_bar_config(disable=True)
        return seat

    def _image_pipeline(self, seat: Any, masked: bool = False) -> Any:
        """The pipeline that takes an input image (and a mask) on ``seat``: the model's own, or its
        img2img / inpaint sibling (made once per seat, over the seat's parts)."""
        params, _ = _call_parameters(seat)
        if "image" in params and (not masked or "mask_image" in params):
            return seat  # editing pipelines (FLUX.2, Kontext, fill) take reference images directly
        key = (id(seat), "inpaint" if masked else "img2img")
        sibling = self._siblings.get(key)
        if sibling is None:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForInpainting if masked else AutoPipelineForImage2Image
            try:
                sibling = auto.from_pipe(seat)
            except Exception as exc:
                kind = "inpainting" if masked else "image-to-image"
                raise ValueError(f"model {self.spec.name!r} ({type(seat).__name__}) has no {kind} variant") from exc
            sibling.set_progress_bar_config(disable=True)
            self._siblings[key] = sibling  # only this seat's holder reaches this key
        return sibling

    # -- generation --------------------------------------------------------

    def steps_for(self, request: TextToImageRequest) -> int:
        """Denoising steps for a request: its own or the model default, clamped to 1..max_steps."""
        steps = request.steps if request.steps is not None else self.spec.default_steps
        return max(1, min(int(steps), self.spec.max_steps))

    def guidance_for(self, request: TextToImageRequest) -> float:
        """Guidance scale for a request: its own or the model default."""
        return float(request.guidance if request.guidance is not None else self.spec.default_guidance)

    def generate(self, request: TextToImageRequest, control: StepControl) -> list[Image.Image]:
        """Run the pipeline; ``request.num_images`` RGB images of the requested size."""
        self._validate(request)
        control.check()
        with self._seat(request.loras, control) as seat:
            control.check()
            masked = request.mask_image is not None
            target = seat if request.init_image is None else self._image_pipeline(seat, masked)
            kwargs = self._call_kwargs(target, request, control)
            images = target(**kwargs).images
        if "callback_on_step_end" not in kwargs:  # pipeline without step callbacks
            control.report(1.0)
        images = [_fit(image, request.width, request.height) for image in images]
        if request.mask_image is not None:
            # outside the mask the result is the input, pixel for pixel (the VAE round trip
            # of latent-space inpainting would otherwise soften it); edges blend with the mask
            mask, base = kwargs["mask_image"], kwargs["image"]
            images = [Image.composite(image, base, mask) for image in images]
        return images

    def generate_batch(self, requests: list[TextToImageRequest], controls: list[StepControl]) -> list[list[Image.Image] | Exception]:
        """Several text-to-image requests of one size, step count and guidance as one pipeline call.

        Each request keeps its prompt and its seed (its own CPU generator, as
        unbatched), its progress and its cancel: a request cancelled (or past
        its deadline) mid-way gets its exception at the next step while the
        others go on; the call stops early only when every request stopped.
        Returns one entry per request: its images, or the exception that ended it.
        """
        if len(requests) == 1:
            try:
                return [self.generate(requests[0], controls[0])]
            except Exception as e:
                return [e]
        first = requests[0]
        for r in requests:
            self._validate(r)
            if r.init_image is not None or r.num_images != 1 or (r.width, r.height, r.steps, r.guidance, r.negative_prompt, r.loras) != (
                first.width, first.height, first.steps, first.guidance, first.negative_prompt, first.loras
            ):
                raise ValueError("a batch needs text-to-image requests of one size, step count, guidance and negative prompt")
        outcome: list[Exception | None] = [None] * len(requests)
        for i, control in enumerate(controls):
            try:
                control.check()
            except Exception as e:
                outcome[i] = e
        if all(o is not None for o in outcome):
            return list(outcome)  # type: ignore[arg-type]
        with self._seat(first.loras) as pipe:
            kwargs = self._call_kwargs(pipe, first, controls[0])
            steps = self.steps_for(first)
            kwargs["prompt"] = [r.prompt for r in requests]
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(r.seed & _SEED_MASK) for r in requests]
            if "negative_prompt" in kwargs:  # one per prompt: pipelines pair them by position
                kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(requests)
            if "num_images_per_prompt" in kwargs:
                kwargs["num_images_per_prompt"] = 1
            if "callback_on_step_end" in kwargs:
                kwargs["callback_on_step_end"] = _batch_step_callback(controls, outcome, steps)
            try:
                images = pipe(**kwargs).images
            except _BatchStopped:
                return list(outcome)  # type: ignore[arg-type]
        results: list[list[Image.Image] | Exception] = []
        for i, control in enumerate(controls):
            if outcome[i] is not None:
                results.append(outcome[i])  # type: ignore[arg-type]
                continue
            if "callback_on_step_end" not in kwargs:
                control.report(1.0)
            results.append([_fit(images[i], first.width, first.height)])
        return results

    def _apply_loras(self, pipe: Any, loras: tuple[tuple[str, float], ...]) -> None:
        """Make exactly ``loras`` (name, scale) active on the loaded pipeline (no other generation running).

        A LoRA is loaded into the pipeline the first time a request names it and
        stays loaded (up to ``lora_cache``, least recently used dropped first);
        switching between LoRAs or back to the base model only changes which
        adapters are active, never reloads the base weights.
        """
        if not loras:
            if self._loras_active:
                pipe.disable_lora()
                self._loras_active = False
            return
        wanted = [name for name, _ in loras]
        for name in wanted:
            if name in self._loras:
                self._loras.move_to_end(name)
                continue
            while len(self._loras) >= max(self.spec.lora_cache, len(wanted)):
                old = next(n for n in self._loras if n not in wanted)
                pipe.delete_adapters(old)
                del self._loras[old]
            path = self.spec.loras[name]
            log.info("model %s: loading LoRA %s from %s", self.spec.name, name, path)
            try:
                pipe.load_lora_weights(path, adapter_name=name)
            except Exception as exc:
                raise ModelLoadError(f"model {self.spec.name!r}: cannot load LoRA {name!r} from {path}: {exc}") from exc
            self._loras[name] = None
        pipe.enable_lora()
        pipe.set_adapters(wanted, adapter_weights=[float(scale) for _, scale in loras])
        self._loras_active = True

    def _validate(self, request: TextToImageRequest) -> None:
        for name, _ in request.loras:
            if name not in self.spec.loras:
                raise ValueError(f"model {self.spec.name!r} has no LoRA {name!r}")
        if request.width <= 0 or request.height <= 0:
            raise ValueError("width and height must be positive")
        if request.num_images < 1:
            raise ValueError("num_images must be at least 1")
        if request.init_image is not None and not self.spec.supports_image_input:
            raise ValueError(f"model {self.spec.name!r} does not accept an input image")
        if request.mask_image is not None and request.init_image is None:
            raise ValueError("a mask needs an input image to edit")

    def _call_kwargs(self, target: Any, request: TextToImageRequest, control: StepControl) -> dict[str, Any]:
        steps = self.steps_for(request)
        generators = [
            torch.Generator("cpu").manual_seed((request.seed + i) & _SEED_MASK) for i in range(request.num_images)
        ]
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": steps,
            "guidance_scale": self.guidance_for(request),
            "num_images_per_prompt": request.num_images,
            "generator": generators,
            "output_type": "pil",
            "callback_on_step_end": _step_callback(control, steps, request.width, request.height),
        }
        if request.negative_prompt:
            kwargs["negative_prompt"] = request.negative_prompt
        if self.spec.default_true_cfg > 1:
            kwargs["true_cfg_scale"] = self.spec.default_true_cfg
            kwargs.setdefault("negative_prompt", "")
        if self.spec.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.spec.max_sequence_length
        if request.init_image is not None:
            image = request.init_image.convert("RGB")
            if image.size != (request.width, request.height):
                image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
            kwargs["image"] = image
            kwargs["strength"] = float(request.strength)
            if request.reference_images and _takes_image_list(target):  # FLUX.2: every reference image
                kwargs["image"] = [image, *(ref.convert("RGB") for ref in request.reference_images)]
        if request.mask_image is not None:
            mask = request.mask_image.convert("L")
            if mask.size != (request.width, request.height):
                mask = mask.resize((request.width, request.height), Image.Resampling.BILINEAR)
            kwargs["mask_image"] = mask
        params, accepts_any = _call_parameters(target)
        if not accepts_any:
            dropped = sorted(set(kwargs) - params)
            if dropped:
                log.debug("%s ignores %s", type(target).__name__, ", ".join(dropped))
            kwargs = {key: value for key, value in kwargs.items() if key in params}
        return kwargs



def _takes_image_list(pipe: Any) -> bool:
    """Whether a pipeline's ``image`` argument is a list of reference images (FLUX.2), not one init image."""
    return type(pipe).__name__.startswith("Flux2")


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB at exactly the requested size (pipelines round sizes to their latent grid)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


class _BatchStopped(Exception):
    """Every request of a batch was cancelled or passed its deadline."""


def _batch_step_callback(controls: list[StepControl], outcome: list, steps: int) -> Callable[..., dict]:
    """Per-request progress and cancel for a batched call; stops the call once no request is left."""

    def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        total = getattr(pipe, "_num_timesteps", None) or steps
        for i, control in enumerate(controls):
            if outcome[i] is not None:
                continue
            control.report((step + 1) / total)
            try:
                control.check()
            except Exception as e:  # this request ends here; the others go on
                outcome[i] = e
        if all(o is not None for o in outcome):
            raise _BatchStopped()
        return callback_kwargs

    return on_step_end


def _step_callback(control: StepControl, steps: int, width: int, height: int) -> Callable[..., dict]:
    """A ``callback_on_step_end`` that reports progress, makes the previews asked for and raises on cancel."""
    state: dict[str, Any] = {"made": 0, "failed": False, "previous": None}

    def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        total = getattr(pipe, "_num_timesteps", None) or steps
        control.report((step + 1) / total)
        control.check()
        if not control.previews or state["failed"]:
            return callback_kwargs
        wanted = control.preview_steps(total)
        latents = callback_kwargs["latents"]
        if step in wanted:
            try:
                images = decode_preview(pipe, latents, width, height, state["previous"])
            except Exception:  # a preview is a courtesy: never fail the generation for one
                log.warning("%s: no preview (latents could not be decoded)", type(pipe).__name__, exc_info=True)
                state["failed"] = True
                return callback_kwargs
            control.preview(state["made"], images)
            state["made"] += 1
        # a flow-matching preview extrapolates from the step before it: keep that one's latents
        state["previous"] = latents.clone() if step + 1 in wanted else None
        return callback_kwargs

    return on_step_end


def decode_preview(
    pipe: Any, latents: torch.Tensor, width: int, height: int, previous: torch.Tensor | None = None
) -> list[Image.Image]:
    """Decode a pipeline's intermediate latents (what it holds after a step) into RGB images.

    With a flow-matching scheduler (FLUX, SD3) and the latents of the step
    before, the preview is the sampler's estimate of the finished image: the
    last Euler step's velocity ``v = (x - x_prev) / (sigma - sigma_prev)`` gives
    ``x0 = x - sigma * v``.  Otherwise the current (still noisy) latents are
    decoded as they are.  FLUX pipelines hold packed 2x2 patch sequences,
    unpacked first; every VAE is undone with its own ``scaling_factor`` /
    ``shift_factor``.
    """
    scheduler = pipe.scheduler
    index = getattr(scheduler, "step_index", None)
    if previous is not None and type(scheduler).__name__.startswith("FlowMatch") and index is not None and index >= 1:
        sigma, sigma_prev = float(scheduler.sigmas[index]), float(scheduler.sigmas[index - 1])
        if sigma_prev != sigma:
            velocity = (latents - previous) / (sigma - sigma_prev)
            latents = latents - sigma * velocity
    if latents.ndim == 3 and hasattr(pipe, "_unpack_latents"):
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    vae = pipe.vae
    config = vae.config
    latents = latents / getattr(config, "scaling_factor", 1.0)
    shift = getattr(config, "shift_factor", None)
    if shift:
        latents = latents + shift
    decoded = vae.decode(latents.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
    images = pipe.image_processor.postprocess(decoded.float(), output_type="pil")
    return [_fit(image, width, height) for image in images]
