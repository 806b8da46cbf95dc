"""Batching on a real tiny FLUX pipeline: compatible waiting requests run as one pipeline call,
each image identical to its unbatched run with the same seed, a cancel drops one request only.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from pixelmill.accounts import keys
from pixelmill.domain.status import ExecutionStatus
from pixelmill.engine.service import Submission
from pixelmill.models.base import GenerationCancelled, StepControl, TextToImageRequest
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.diffusers_backend import DiffusersBackend
from pixelmill.store.tables import files
from tests.conftest import create_key, wait_for
from tests.helpers.tiny_pipelines import cached_tiny_flux, torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def backend() -> DiffusersBackend:
    catalog = ModelCatalog.from_toml(f'[[models]]\nname = "tiny"\npath = "{cached_tiny_flux()}"\ndevice = "cpu"\ndefault_steps = 3\nmax_batch = 4\n')
    b = DiffusersBackend(catalog.get("tiny"))
    b.load()
    return b


def request(prompt: str, seed: int) -> TextToImageRequest:
    return TextToImageRequest(prompt=prompt, width=32, height=32, steps=3, seed=seed)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_batch_gives_each_image_its_unbatched_pixels(backend):
    requests = [request("a red cat", 1), request("a blue dog", 2), request("a green tree", 3)]
    alone = [backend.generate(r, StepControl())[0] for r in requests]
    progress: list[list[float]] = [[], [], []]
    controls = [StepControl(on_progress=progress[i].append) for i in range(3)]
    batched = backend.generate_batch(requests, controls)
    for one, many in zip(alone, batched):
        assert np.abs(pixels(one) - pixels(many[0])).max() <= 1  # same seed, same image (batched maths may round once)
    assert len({pixels(b[0]).tobytes() for b in batched}) == 3
    assert all(p[-1] == 1.0 and len(p) == 3 for p in progress)


def test_a_cancel_removes_one_request_and_spares_the_others(backend):
    requests = [request("a red cat", 1), request("a blue dog", 2), request("a green tree", 3)]
    alone = [backend.generate(r, StepControl())[0] for r in requests]
    controls = [StepControl() for _ in range(3)]

    def cancel_after_first_step(fraction: float) -> None:
        controls[1].cancel()

    controls[1].on_progress = cancel_after_first_step
    out = backend.generate_batch(requests, controls)
    assert isinstance(out[1], GenerationCancelled)
    assert np.abs(pixels(out[0][0]) - pixels(alone[0])).max() <= 1
    assert np.abs(pixels(out[2][0]) - pixels(alone[2])).max() <= 1


def test_the_engine_batches_compatible_waiting_runs(make_runtime, sqlite_url, backend, monkeypatch):
    sizes = []
    original = DiffusersBackend.generate_batch

    def counting(self, requests, controls):
        sizes.append(len(requests))
        return original(self, requests, controls)

    monkeypatch.setattr(DiffusersBackend, "generate_batch", counting)
    rt = make_runtime(sqlite_url, start=False, plans={"free": {"max_active_tasks": 100}})
    rt.catalog.models.append(rt.catalog.get("fake").model_copy(update={"name": "tiny", "path": cached_tiny_flux(), "max_batch": 4}))
    rt.models.register("tiny", backend)
    key = create_key(rt, account="batcher")
    with rt.db.engine.connect() as conn:
        who = keys.authenticate(conn, key)

    def submit(prompt, seed, width=64):
        graph = {"nodes": {"gen": {"type": "text_to_image", "params": {"model": "tiny", "prompt": prompt, "width": width, "height": 64, "steps": 3, "seed": seed}}}}
        return rt.executions.submit(Submission(principal=who, graph=graph, dialect="workflow", label="b")).id

    ids = [submit(f"a cat {i}", 10 + i) for i in range(5)] + [submit("a wide cat", 99, width=80)]
    rt.start()
    views = [wait_for(lambda e=e: (v := rt.executions.get(who.account_id, e)).status.is_terminal() and v, timeout=120) for e in ids]
    assert all(v.status == ExecutionStatus.SUCCEEDED for v in views), [(v.error_code, v.error_message) for v in views]
    # the first pick took three compatible runs with it; the fifth ran alone, and so did the
    # 80-wide one, which never joins a 64-wide batch
    assert sizes == [4]
    for i, view in enumerate(views[:5]):
        with rt.db.engine.connect() as conn:
            key_ = conn.execute(sa.select(files.c.storage_key).where(files.c.id == view.result_files()[0].id)).scalar_one()
        got = Image.open(io.BytesIO(rt.storage.get(key_))).convert("RGB")
        alone = backend.generate(TextToImageRequest(prompt=f"a cat {i}", width=64, height=64, steps=3, seed=10 + i), StepControl())[0]
        assert np.abs(pixels(got) - pixels(alone)).max() <= 1
