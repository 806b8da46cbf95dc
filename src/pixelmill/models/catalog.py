"""The model catalog: which models this server offers and how to load them.

A catalog is a TOML file with one ``[[models]]`` table per model (see
``default_catalog.toml`` for the built-in one and a commented operator
example).  Each entry is validated into a :class:`ModelSpec`; the
:class:`ModelCatalog` checks that names are unique and that every BFL endpoint
(``flux-dev``, ``flux-pro-1.1`` ...) is served by at most one model.

Weights are found in one of three places:

* ``path = "builtin:<name>"``: a folder shipped inside the package, under
  ``pixelmill/models/weights/<name>``;
* ``path = "/some/folder"``: a local diffusers folder (relative paths in a
  catalog file are relative to that file);
* ``repo_id = "org/name"``: a Hugging Face repository, read from the local
  Hugging Face cache unless ``allow_download`` is true.

A local weights folder may hold a ``pixelmill.json`` with recommended
``default_steps``, ``default_guidance``, ``max_steps``, ``default_true_cfg`` and
``max_sequence_length``, and the sizes the model can make: ``max_megapixels``,
``min_size``/``max_size`` (shortest and longest side) and ``size_multiple``;
they are used for every such field the catalog entry leaves out.

Sizes belong to the model: every dialect asks :meth:`ModelSpec.size_limits` what
a model can make.  Aspect-ratio requests (FLUX1.1 [pro] Ultra, Kontext) get the
vendor's size when the model can make it, else the largest size of that shape
it can; an explicit size the model cannot make is refused naming the field.

``aliases`` lets vendor model ids (``flux-1.1-pro``, ``gpt-image-1`` ...) name a
catalog model: :meth:`ModelCatalog.resolve` looks a name up by model name first,
then by alias.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_PREFIX = "builtin:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SIDECAR_FILE = "pixelmill.json"
_SIDECAR_KEYS = (
    "default_steps", "default_guidance", "max_steps", "default_true_cfg", "max_sequence_length",
    "max_megapixels", "min_side", "max_side", "size_multiple",
)
#: other names a weights folder's pixelmill.json may use for a key
_SIDECAR_ALIASES = {"min_side": "min_size", "max_side": "max_size"}
MEGAPIXEL = 1 << 20
"""Pixels in one megapixel as used for size limits (4 MP = 2048x2048), as BFL counts them."""


AREA_SLACK = 1.02
"""Sizes whose sides are rounded to the nearest multiple of 64 overshoot their area by
up to about 1 % (BFL's 4 MP Ultra 16:9 is 2752x1536, 4.03 MP): such a size still counts
as within a model's ``max_megapixels``."""


@dataclass(frozen=True)
class SizeLimits:
    """The output sizes a model can make."""

    min_side: int = 64
    max_side: int = 4096
    max_pixels: int = 4 * MEGAPIXEL
    multiple: int = 16

    @property
    def max_megapixels(self) -> float:
        return self.max_pixels / MEGAPIXEL

    def problems(self, width: int, height: int) -> list[tuple[str | None, str]]:
        """What is wrong with ``width`` x ``height`` for this model: ``(field, message)``
        pairs, field ``"width"``/``"height"`` or None for the area; empty when it can be made."""
        out: list[tuple[str | None, str]] = []
        for name, value in (("width", width), ("height", height)):
            if value < self.min_side:
                out.append((name, f"{name} {value} is less than {self.min_side}, the smallest side this model makes"))
            elif value > self.max_side:
                out.append((name, f"{name} {value} is more than {self.max_side}, the largest side this model makes"))
            elif value % self.multiple:
                out.append((name, f"{name} {value} must be a multiple of {self.multiple} for this model"))
        if width * height > self.max_pixels * AREA_SLACK:
            out.append((None, f"width x height {width}x{height} is {width * height / MEGAPIXEL:.2f} megapixels, more than "
                              f"the {self.max_megapixels:g} megapixels this model makes"))
        return out

    def fits(self, width: int, height: int) -> bool:
        return not self.problems(width, height)

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The largest size with ``width:height``'s shape that this model makes (sides
        multiples of ``multiple``, rounded down; ``width`` x ``height`` itself if it fits)."""
        if self.fits(width, height):
            return width, height
        scale = min(1.0, self.max_side / max(width, height), math.sqrt(self.max_pixels / (width * height)))
        if min(width, height) * scale < self.min_side:  # too small (or a sliver): the short side at its minimum
            scale = self.min_side / min(width, height)
        m = self.multiple
        w, h = (max(self.min_side, int(v * scale) // m * m) for v in (width, height))
        w, h = min(w, self.max_side // m * m), min(h, self.max_side // m * m)
        while w * h > self.max_pixels and max(w, h) > self.min_side:  # rounding kept it a little over
            if w >= h:
                w -= m
            else:
                h -= m
        return w, h
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CatalogError(ValueError):
    """A catalog file that cannot be read or does not validate."""


class ModelSpec(BaseModel):
    """One model the server can run, and how to load and price it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    task: Literal["text-to-image", "image-to-image"] = "text-to-image"
    backend: Literal["diffusers"] = "diffusers"
    path: str | None = None
    repo_id: str | None = None
    allow_download: bool = False
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    price_per_megapixel: float = Field(default=1.0, ge=0)
    default_steps: int = Field(default=28, ge=1)
    default_guidance: float = Field(default=3.5, ge=0)
    max_steps: int = Field(default=50, ge=1)
    #: Classifier-free guidance against an empty negative prompt (1 = off); for
    #: models trained with prompt dropout rather than guidance distillation.
    default_true_cfg: float = Field(default=1.0, ge=1.0)
    #: Text-encoder prompt length the model was trained with (FLUX: T5 tokens).
    max_sequence_length: int | None = Field(default=None, ge=1, le=512)
    supports_image_input: bool = False
    #: Compatible waiting requests (same size, steps, guidance) run as one pipeline call of
    #: up to this many images; 1 turns batching off for this model.
    max_batch: int = Field(default=1, ge=1, le=64)
    #: LoRA files a request may apply to this model, by name (``loras = {ink = "/loras/ink.safetensors"}``;
    #: relative paths are relative to the catalog file).
    loras: dict[str, str] = {}
    #: LoRAs kept loaded next to the base model (least recently used ones are dropped).
    lora_cache: int = Field(default=8, ge=1, le=64)
    #: GPU speed options (see ``pixelmill.models.speed``); each is a no-op with a warning
    #: where the hardware cannot do it.
    compile: bool = False  # torch.compile of the denoiser with fused QKV, kernels cached on disk
    quantize: Literal["none", "fp8", "int8"] = "none"  # fp8: CUDA compute capability >= 8.9
    cache: Literal["none", "first_block", "taylorseer"] = "none"  # diffusers step caching
    cache_threshold: float = Field(default=0.08, gt=0, le=1)  # first_block: reuse below this change
    cache_interval: int = Field(default=5, ge=1, le=50)  # taylorseer: full steps every N
    cache_warmup_steps: int = Field(default=3, ge=0, le=100)  # taylorseer: no caching before this step
    bfl_endpoints: list[str] = []
    #: other names clients may use for this model (vendor ids: "flux-1.1-pro", "gpt-image-1" ...)
    aliases: list[str] = []
    #: largest output, in megapixels of 2**20 pixels (4 = 2048x2048)
    max_megapixels: float = Field(default=4.0, gt=0, le=64)
    #: shortest and longest side, in pixels
    min_side: int = Field(default=64, ge=16)
    max_side: int = Field(default=4096, ge=64, le=16384)
    #: every side a multiple of this
    size_multiple: int = Field(default=16, ge=1, le=256)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                "model name must be 1-64 characters of letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit; got {value!r}"
            )
        return value

    @field_validator("loras")
    @classmethod
    def _check_loras(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _NAME_RE.match(name):
                raise ValueError(f"invalid LoRA name {name!r}")
        return value

    @field_validator("bfl_endpoints", "aliases")
    @classmethod
    def _check_endpoints(cls, value: list[str], info) -> list[str]:
        what = "BFL endpoint" if info.field_name == "bfl_endpoints" else "alias"
        seen: set[str] = set()
        for endpoint in value:
            if not _NAME_RE.match(endpoint):
                raise ValueError(f"invalid {what} name {endpoint!r}")
            if endpoint in seen:
                raise ValueError(f"{what} {endpoint!r} listed twice")
            seen.add(endpoint)
        return value

    @model_validator(mode="before")
    @classmethod
    def _apply_sidecar(cls, data: Any) -> Any:
        """Fill steps/guidance left out of the entry from the folder's pixelmill.json."""
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            return data
        missing = [key for key in _SIDECAR_KEYS if key not in data]
        if not missing:
            return data
        sidecar = _read_sidecar(_local_folder(data["path"]) / SIDECAR_FILE)
        return {**data, **{key: sidecar[key] for key in missing if key in sidecar}}

    @model_validator(mode="after")
    def _check_consistency(self) -> "ModelSpec":
        if self.path is None and self.repo_id is None:
            raise ValueError(f"model {self.name!r} needs a 'path' or a 'repo_id'")
        if self.default_steps > self.max_steps:
            raise ValueError(
                f"model {self.name!r}: default_steps ({self.default_steps}) exceeds max_steps ({self.max_steps})"
            )
        if self.min_side > self.max_side:
            raise ValueError(f"model {self.name!r}: min_side ({self.min_side}) exceeds max_side ({self.max_side})")
        if self.task == "image-to-image" and not self.supports_image_input:
            raise ValueError(f"model {self.name!r}: an image-to-image model must set supports_image_input = true")
        return self

    @property
    def is_local(self) -> bool:
        """True when the weights come from a folder rather than a hub repository."""
        return self.path is not None

    def resolved_path(self) -> str:
        """An absolute folder, or the repo id, that ``from_pretrained`` can load."""
        if self.path is not None:
            return str(_local_folder(self.path))
        assert self.repo_id is not None
        return self.repo_id

    def size_limits(self) -> SizeLimits:
        """The output sizes this model makes (catalog entry, else its folder's pixelmill.json, else defaults)."""
        return SizeLimits(
            min_side=self.min_side,
            max_side=self.max_side,
            max_pixels=int(self.max_megapixels * MEGAPIXEL),
            multiple=self.size_multiple,
        )

    def megapixels(self, width: int, height: int, num_images: int = 1) -> float:
        """Output megapixels (10^6 pixels) of a request."""
        return width * height * num_images / 1_000_000

    def price(self, width: int, height: int, num_images: int = 1) -> float:
        """Credits for a request: price_per_megapixel x output megapixels, rounded up to 0.01."""
        if width <= 0 or height <= 0 or num_images <= 0:
            raise ValueError("width, height and num_images must be positive")
        exact = Decimal(str(self.price_per_megapixel)) * Decimal(width * height * num_images) / Decimal(1_000_000)
        return float(exact.quantize(Decimal("0.01"), rounding=ROUND_CEILING))


class ModelCatalog(BaseModel):
    """All models on offer, looked up by name or by the BFL endpoint they serve."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec]

    @model_validator(mode="after")
    def _check_unique(self) -> "ModelCatalog":
        names: set[str] = set()
        endpoints: dict[str, str] = {}
        aliases: dict[str, str] = {}
        for spec in self.models:
            if spec.name in names:
                raise ValueError(f"model name {spec.name!r} is used twice")
            names.add(spec.name)
            for alias in spec.aliases:
                if alias in aliases:
                    raise ValueError(f"alias {alias!r} is given to both {aliases[alias]!r} and {spec.name!r}")
                aliases[alias] = spec.name
            for endpoint in spec.bfl_endpoints:
                if endpoint in endpoints:
                    raise ValueError(
                        f"BFL endpoint {endpoint!r} is mapped to both {endpoints[endpoint]!r} and {spec.name!r}"
                    )
                endpoints[endpoint] = spec.name
        clash = sorted(set(aliases) & names)
        if clash:
            raise ValueError(f"alias {clash[0]!r} is also a model's name; an alias must name no other model")
        return self

    def get(self, name: str) -> ModelSpec:
        """The model called ``name``; KeyError naming the known models otherwise."""
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown model {name!r}; this catalog has: {', '.join(self.names()) or '(none)'}")

    def resolve(self, name: str) -> ModelSpec | None:
        """The model a client means by ``name``: a model name, else an alias, else the
        model serving the BFL endpoint of that name; None if none."""
        for spec in self.models:
            if spec.name == name:
                return spec
        for spec in self.models:
            if name in spec.aliases:
                return spec
        return self.for_bfl_endpoint(name)

    def aliases(self) -> dict[str, str]:
        """Every alias, mapped to its model's name."""
        return {alias: spec.name for spec in self.models for alias in spec.aliases}

    def __contains__(self, name: object) -> bool:
        return any(spec.name == name for spec in self.models)

    def for_bfl_endpoint(self, endpoint: str) -> ModelSpec | None:
        """The model serving BFL endpoint ``endpoint`` (e.g. "flux-dev"), or None."""
        for spec in self.models:
            if endpoint in spec.bfl_endpoints:
                return spec
        return None

    def bfl_endpoints(self) -> dict[str, str]:
        """Every BFL endpoint served, mapped to its model name."""
        return {endpoint: spec.name for spec in self.models for endpoint in spec.bfl_endpoints}

    def names(self) -> list[str]:
        """Model names in catalog order."""
        return [spec.name for spec in self.models]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "ModelCatalog":
        """Read a TOML catalog file; ``None`` reads the built-in default catalog.

        Relative ``path`` entries are resolved against the file's folder.
        Raises :class:`CatalogError` with the file name and the offending
        entry when the file is missing, is not TOML, or does not validate.
        """
        if path is None:
            text = resources.files(__package__).joinpath("default_catalog.toml").read_text("utf-8")
            return cls.from_toml(text, source="built-in default catalog")
        file = Path(path).expanduser()
        try:
            text = file.read_text("utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read model catalog {str(file)!r}: {exc.strerror or exc}") from exc
        return cls.from_toml(text, source=str(file), base_dir=file.resolve().parent)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>", base_dir: Path | None = None) -> "ModelCatalog":
        """Parse and validate catalog TOML text (``source`` names it in errors)."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(f"model catalog {source}: not valid TOML: {exc}") from exc
        unknown = set(data) - {"models"}
        if unknown:
            raise CatalogError(
                f"model catalog {source}: unknown top-level keys {sorted(unknown)}; "
                "models are declared as [[models]] tables"
            )
        entries = data.get("models")
        if not isinstance(entries, list) or not entries:
            raise CatalogError(f"model catalog {source}: no models; declare at least one [[models]] table")
        if base_dir is not None:
            entries = [_anchor_path(entry, base_dir) for entry in entries]
        try:
            return cls.model_validate({"models": entries})
        except ValidationError as exc:
            raise CatalogError(f"model catalog {source} is invalid:\n{_describe(exc, entries)}") from exc


def _local_folder(path: str) -> Path:
    """The folder a ``path`` entry points at (builtin: prefix resolved)."""
    if path.startswith(BUILTIN_PREFIX):
        return WEIGHTS_DIR / path[len(BUILTIN_PREFIX) :]
    return Path(path).expanduser().resolve()


def _anchor_path(entry: Any, base_dir: Path) -> Any:
    """Make a relative ``path`` in a catalog entry relative to the catalog file."""
    if not isinstance(entry, dict):
        return entry
    path = entry.get("path")
    if isinstance(path, str) and not path.startswith(BUILTIN_PREFIX):
        folder = Path(path).expanduser()
        if not folder.is_absolute():
            entry = {**entry, "path": str((base_dir / folder).resolve())}
    loras = entry.get("loras")
    if isinstance(loras, dict):
        entry = {**entry, "loras": {k: str((base_dir / Path(v).expanduser()).resolve()) if isinstance(v, str) else v for k, v in loras.items()}}
    return entry


def _read_sidecar(file: Path) -> dict[str, Any]:
    """The recommended settings in a weights folder's pixelmill.json ({} if none)."""
    try:
        data = json.loads(file.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for key in _SIDECAR_KEYS:
        short = _SIDECAR_ALIASES.get(key, key.removeprefix("default_"))
        value = data.get(key, data.get(short))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def _describe(exc: ValidationError, entries: list[Any]) -> str:
    """One line per validation problem, naming the model entry it is in."""
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = "catalog"
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            index = loc[1]
            entry = entries[index] if index < len(entries) else None
            label = entry.get("name") if isinstance(entry, dict) else None
            where = f"models[{index}]" + (f" ({label!r})" if label else "")
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}{' ' + field if field else ''}: {message}")
    return "\n".join(lines)
