"""Model residency: which models a worker keeps in memory, within a budget.

Each worker has a memory budget per kind of memory: host RAM for models on the
CPU (or Apple's unified memory), and VRAM for models on a CUDA device.  The
registry asks :class:`Residency` before loading a model:

* a model that is resident is used as it is (never loaded twice: concurrent
  requests for a loading model wait for that one load);
* a model that does not fit makes room by unloading the **least recently used
  idle** models of the same memory; a model **in use** is never unloaded, so
  a load that cannot make room waits until a model in use is released (or
  loads over the budget, logged, when nothing it could wait for would free
  enough);
* idle models unload on their own after ``idle_unload_s`` (the registry's
  sweeper).

Before a load, a model's size is estimated from its weight files; once loaded
it is measured from its tensors (:func:`measure_bytes`) and that figure counts.
Registered backends (built elsewhere, tests' fakes) are pinned: never unloaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx")


class ModelState(StrEnum):
    COLD = "cold"  # not in memory
    LOADING = "loading"
    RESIDENT = "resident"


@dataclass
class Residence:
    """What a worker knows about one model's place in memory."""

    name: str
    state: ModelState = ModelState.COLD
    device: str | None = None  # where it is (or goes): "cpu", "cuda", "mps"
    memory_bytes: int = 0  # measured once loaded, estimated while loading
    load_seconds: float | None = None  # the last load's duration
    loaded_at: float | None = None
    last_used_at: float | None = None
    in_use: int = 0  # generations running on it now
    pinned: bool = False  # registered from outside: never unloaded
    loads: int = 0  # how many times this worker loaded it

    @property
    def memory(self) -> str:
        """``"ram"`` or ``"vram"``: which budget the model counts against."""
        return memory_kind(self.device)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "device": self.device,
            "memory": self.memory if self.device else None,
            "memory_bytes": self.memory_bytes,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "loaded_at": self.loaded_at,
            "last_used_at": self.last_used_at,
            "in_use": self.in_use,
            "loads": self.loads,
        }


def memory_kind(device: str | None) -> str:
    return "vram" if (device or "").startswith("cuda") else "ram"


@dataclass
class MemoryBudget:
    """Bytes a worker may fill with models, per kind of memory (None: no limit)."""

    ram_bytes: int | None = None
    vram_bytes: int | None = None

    def limit(self, kind: str) -> int | None:
        return self.vram_bytes if kind == "vram" else self.ram_bytes

    @classmethod
    def from_megabytes(cls, ram_mb: float | None, vram_mb: float | None) -> "MemoryBudget":
        return cls(None if ram_mb is None else int(ram_mb * 2**20), None if vram_mb is None else int(vram_mb * 2**20))


@dataclass
class LoadPlan:
    """What :meth:`Residency.plan_load` decided for one load."""

    evict: list[str] = field(default_factory=list)
    wait: bool = False  # room can only come from a model in use: wait for a release
    over_budget: bool = False  # nothing can make room: load anyway


class Residency:
    """The policy: which idle models to unload so that a new one fits."""

    def __init__(self, budget: MemoryBudget | None = None, idle_unload_s: float | None = None, clock=time.time):
        self.budget = budget or MemoryBudget()
        self.idle_unload_s = idle_unload_s
        self.clock = clock

    def used(self, models: Iterable[Residence], kind: str) -> int:
        return sum(m.memory_bytes for m in models if m.state != ModelState.COLD and m.memory == kind)

    def plan_load(self, models: list[Residence], loading: Residence, need: int) -> LoadPlan:
        """Unload which idle models (least recently used first) so ``need`` more bytes fit."""
        kind = loading.memory
        limit = self.budget.limit(kind)
        if limit is None:
            return LoadPlan()
        others = [m for m in models if m.name != loading.name and m.state != ModelState.COLD and m.memory == kind]
        free = limit - sum(m.memory_bytes for m in others)
        if need <= free:
            return LoadPlan()
        idle = sorted(
            (m for m in others if m.state == ModelState.RESIDENT and m.in_use == 0 and not m.pinned),
            key=lambda m: m.last_used_at or m.loaded_at or 0.0,
        )
        evict = []
        for m in idle:
            evict.append(m.name)
            free += m.memory_bytes
            if need <= free:
                return LoadPlan(evict=evict)
        busy = [m for m in others if (m.in_use > 0 or m.state == ModelState.LOADING) and not m.pinned]
        if busy and need <= free + sum(m.memory_bytes for m in busy):
            return LoadPlan(evict=evict, wait=True)  # a release will make room
        return LoadPlan(evict=evict, over_budget=True)

    def idle_expired(self, models: Iterable[Residence]) -> list[str]:
        """Resident, idle, unpinned models unused for ``idle_unload_s``."""
        if not self.idle_unload_s:
            return []
        cutoff = self.clock() - self.idle_unload_s
        return [
            m.name
            for m in models
            if m.state == ModelState.RESIDENT and m.in_use == 0 and not m.pinned and (m.last_used_at or m.loaded_at or 0.0) < cutoff
        ]


def estimate_bytes(folder: str | Path | None) -> int:
    """A model's size before loading: the bytes of the weight files in its folder (0 if unknown)."""
    if folder is None:
        return 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def measure_bytes(backend: Any) -> int | None:
    """Bytes of the tensors a loaded backend holds (parameters and buffers of its torch modules).

    A backend may answer itself (``memory_bytes()``); a diffusers pipeline is
    measured through its components; None when nothing can be measured.
    """
    own = getattr(backend, "memory_bytes", None)
    if callable(own):
        value = own()
        if value is not None:
            return int(value)
    pipe = getattr(backend, "_pipe", None)
    if pipe is None:
        return None
    return pipeline_bytes(pipe)


def pipeline_bytes(pipe: Any) -> int:
    """Parameter and buffer bytes of every torch module of a diffusers pipeline."""
    import torch

    seen: set[int] = set()
    total = 0
    components = getattr(pipe, "components", {}) or {}
    for component in components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in list(component.parameters()) + list(component.buffers()):
            key = tensor.data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
