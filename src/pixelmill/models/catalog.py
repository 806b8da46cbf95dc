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
``max_sequence_length``; they are used for every such field the catalog entry
leaves out.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from decimal import ROUND_CEILING, Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_PREFIX = "builtin:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SIDECAR_FILE = "pixelmill.json"
_SIDECAR_KEYS = ("default_steps", "default_guidance", "max_steps", "default_true_cfg", "max_sequence_length")
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
    bfl_endpoints: list[str] = []

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                "model name must be 1-64 characters of letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit; got {value!r}"
            )
        return value

    @field_validator("bfl_endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for endpoint in value:
            if not _NAME_RE.match(endpoint):
                raise ValueError(f"invalid BFL endpoint name {endpoint!r}")
            if endpoint in seen:
                raise ValueError(f"BFL endpoint {endpoint!r} listed twice")
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
        for spec in self.models:
            if spec.name in names:
                raise ValueError(f"model name {spec.name!r} is used twice")
            names.add(spec.name)
            for endpoint in spec.bfl_endpoints:
                if endpoint in endpoints:
                    raise ValueError(
                        f"BFL endpoint {endpoint!r} is mapped to both {endpoints[endpoint]!r} and {spec.name!r}"
                    )
                endpoints[endpoint] = spec.name
        return self

    def get(self, name: str) -> ModelSpec:
        """The model called ``name``; KeyError naming the known models otherwise."""
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown model {name!r}; this catalog has: {', '.join(self.names()) or '(none)'}")

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
            return {**entry, "path": str((base_dir / folder).resolve())}
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
        short = key.removeprefix("default_")
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
