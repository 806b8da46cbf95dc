"""Is the committed Studio build (src/pixelmill/studio) built from the web/ sources as they are?

Recomputes the hash that scripts/stamp.mjs records in build-info.json (every file
under web/ except node_modules/, dist/ and dot-files, by path then bytes) and
compares.  Exit status 1, with what to do, when the build is stale.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent
BUILD = WEB.parent / "src" / "pixelmill" / "studio"
SKIP = {"node_modules", "dist"}


def source_files(web: Path = WEB) -> list[str]:
    out = []

    def walk(d: Path) -> None:
        for p in d.iterdir():
            if p.name in SKIP or p.name.startswith("."):
                continue
            if p.is_dir():
                walk(p)
            else:
                out.append(p.relative_to(web).as_posix())

    walk(web)
    return sorted(out, key=lambda s: s.encode("utf-16-be"))  # JavaScript's default string order


def source_hash(web: Path = WEB) -> str:
    h = hashlib.sha256()
    for rel in source_files(web):
        h.update(rel.encode() + b"\0")
        h.update((web / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def problem(web: Path = WEB, build: Path = BUILD) -> str | None:
    """What is wrong with the committed build, or None when it matches the sources."""
    info_file = build / "build-info.json"
    if not (build / "index.html").is_file() or not info_file.is_file():
        return f"Studio is not built: {build} has no index.html/build-info.json"
    recorded = json.loads(info_file.read_text()).get("sourceHash")
    actual = source_hash(web)
    if recorded != actual:
        return (
            f"The committed Studio build is stale: web/ sources hash to {actual[:12]}, the build records {str(recorded)[:12]}.\n"
            "Rebuild and commit it: (cd web && npm ci && npm run build) && git add src/pixelmill/studio"
        )
    return None


if __name__ == "__main__":
    msg = problem()
    if msg:
        print("\n" + "=" * 78 + "\n" + msg + "\n" + "=" * 78, file=sys.stderr)
        sys.exit(1)
    print("Studio build matches web/ sources")
