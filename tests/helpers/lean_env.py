"""A Python environment holding what ``pip install pixelmill[api]`` installs, and nothing else.

The distributions are those pixelmill's installed metadata requires for the ``api`` extra, followed
through their own requirements (markers evaluated for this interpreter, extras such as
``celery[redis]`` included).  The environment is a folder of links to those distributions' files
in this interpreter's site-packages, which a child interpreter started with ``-S`` takes as its
only site folder.  In it ``import torch`` fails as it does where torch was never installed, and
``importlib.util.find_spec("torch")`` answers ``None``: a dependency the API node needs but does not
declare shows up as an ImportError.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement

SRC = Path(__file__).resolve().parents[2] / "src"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(dist: str = "pixelmill", extras: tuple[str, ...] = ("api",)) -> set[str]:
    """Normalised names of the distributions ``dist[extras]`` installs (itself excluded)."""
    found: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(dist, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        for line in metadata.requires(name) or ():
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            child = _norm(req.name)
            if child != _norm(dist):
                found.add(child)
            todo.append((child, frozenset(req.extras) | (wanted if child == _norm(dist) else frozenset())))
    return found


def _entries(dists: set[str]) -> set[str]:
    """Top-level site-packages names (modules, packages, ``.libs`` and dist-info folders) of ``dists``."""
    names: set[str] = set()
    for dist in metadata.distributions():
        if _norm(dist.metadata["Name"]) in dists:
            for f in dist.files or ():
                if f.parts[0] not in ("..", "bin"):
                    names.add(f.parts[0])
    return names


def build(folder: Path) -> Path:
    """Fill ``folder`` with links to the files of the distributions ``pixelmill[api]`` installs."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = _entries(closure())
    for site_dir in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(site_dir).iterdir():
            if entry.name in keep and not (folder / entry.name).exists():
                os.symlink(entry, folder / entry.name)
    return folder


def python(folder: Path, code: str) -> list[str]:
    """The argv that runs ``code`` in the lean environment (pixelmill from this checkout's ``src``)."""
    prelude = f"import site, sys; site.addsitedir({str(folder)!r}); sys.path.insert(0, {str(SRC)!r}); "
    return [sys.executable, "-S", "-c", prelude + code]
