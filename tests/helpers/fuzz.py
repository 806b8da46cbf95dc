"""Property-based fuzzing of the served OpenAPI document with schemathesis.

Every operation of ``/openapi.json`` gets generated requests (valid and invalid
against the documented schemas); each response must not be a server error and must
match what the document declares for its status (status code, content type, body
schema).  Used by the test suite on a short budget and by ``bench/fuzz_api.py``
for a longer run.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

DESIGNED_5XX = {501, 503, 504}
"""Server-side statuses the API answers on purpose (not offered, busy, wait ran out) when documented."""


@schemathesis.check
def no_server_error(ctx, response, case):
    """A 500 is always a failure; another 5xx only when the operation does not document it."""
    status = response.status_code
    if status >= 500:
        documented = {str(k) for k in (case.operation.definition.raw.get("responses") or {})}
        if status not in DESIGNED_5XX or str(status) not in documented:
            raise AssertionError(f"Server error {status}: {response.text[:300]}")
    return None


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class TinyBackend:
    """An image backend that answers every request at once with 8x8 images, so the
    fuzzer's many accepted submissions cost next to nothing to run."""

    default_steps = 1

    def generate(self, request, control):
        from PIL import Image

        control.report(1.0)
        return [Image.new("RGB", (8, 8), (40, 80, 120)) for _ in range(request.num_images)]


@dataclass
class FuzzReport:
    cases: int = 0
    operations: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    failures: dict[str, list[str]] = field(default_factory=dict)  # operation -> distinct failure messages
    timings: dict[str, float] = field(default_factory=dict)  # operation -> seconds
    skipped: list[str] = field(default_factory=list)  # operation (mode) left out when the budget ran out

    def summary(self) -> str:
        lines = [f"{self.cases} cases over {self.operations} operations in {self.seconds:.1f} s; statuses {dict(sorted(self.statuses.items()))}"]
        if self.skipped:
            lines.append(f"budget ran out: {len(self.skipped)} operation runs left out")
        for op, msgs in self.failures.items():
            for m in msgs:
                lines.append(f"FAIL {op}: {m}")
        return "\n".join(lines)


def fuzz(app, headers: dict[str, str], *, max_examples: int | dict, modes=(GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
         budget_s: float | None = None, skip: tuple[str, ...] = (), seed: int | None = 0) -> FuzzReport:
    """Fuzz every operation of ``app``'s document with ``max_examples`` cases per mode
    (a number, or a dict by mode); past ``budget_s`` the remaining runs are listed in
    ``report.skipped``."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = FuzzReport()
    started = time.monotonic()
    operations = []
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        if not any(s in label for s in skip):
            operations.append((label, op))
    report.operations = len(operations)
    for mode in modes:  # one pass per mode, so a budget cut still leaves every operation tried
        for label, op in operations:
            if budget_s is not None and time.monotonic() - started > budget_s:
                report.skipped.append(f"{label} ({mode.value})")
                continue
            t0 = time.monotonic()
            n = max_examples.get(mode, 1) if isinstance(max_examples, dict) else max_examples
            _run_operation(op, label, mode, headers, n, report, seed)
            report.timings[label] = report.timings.get(label, 0.0) + time.monotonic() - t0
    report.seconds = time.monotonic() - started
    return report


def _run_operation(op, label: str, mode, headers: dict[str, str], max_examples: int, report: FuzzReport, seed: int | None) -> None:
    try:
        strategy = op.as_strategy(generation_mode=mode)
    except Exception as e:  # an operation the generator cannot handle is a finding too
        report.failures.setdefault(label, []).append(f"cannot generate ({mode.value}): {e}")
        return

    def _test(case: Any) -> None:
        report.cases += 1
        try:
            response = case.call(headers=headers)
        except Exception as e:  # the app raised instead of answering
            _record(report, label, f"{type(e).__name__}: {e}")
            return
        report.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # schemathesis raises a group of the failed checks
            message = str(e).strip().splitlines()
            _record(report, label, " | ".join(message[:6])[:600])

    run = settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=seed is not None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(given(case=strategy)(_test))
    try:
        run()
    except Exception as e:  # hypothesis gave up (e.g. unsatisfiable): note it
        _record(report, label, f"generation stopped ({mode.value}): {type(e).__name__}: {str(e)[:200]}")


def _record(report: FuzzReport, label: str, message: str) -> None:
    found = report.failures.setdefault(label, [])
    if message not in found and len(found) < 5:
        found.append(message)
