"""The OpenAI Images dialect, driven by the official ``openai`` client against a real uvicorn server."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, RecordingBackend, create_key, wait_for
from tests.helpers.servers import serve


class Server:
    """A running server with one account: its runtime, base URL, key, backend and an OpenAI client."""

    def __init__(self, rt, app, base, key, backend):
        self.rt, self.app, self.base, self.key, self.backend = rt, app, base, key, backend
        self.client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=2, timeout=30)

    def credits(self) -> float:
        r = httpx.get(f"{self.base}/v1/credits", headers={"Authorization": f"Bearer {self.key}"})
        return r.json()["credits"]

    def executions(self):
        from pixelmill.accounts.keys import authenticate

        with self.rt.db.engine.connect() as conn:
            account = authenticate(conn, self.key).account_id
        return self.rt.executions.list(account)


@pytest.fixture
def start(make_runtime, sqlite_url):
    """start(backend=None, credits=1000, db_url=None) -> Server (stopped at teardown)."""
    with_servers = []

    def _start(backend=None, credits=1000.0, db_url=None, **settings):
        backend = backend or FakeBackend()
        rt = make_runtime(db_url or sqlite_url, backend=backend, **settings)
        app = create_app(rt, manage_runtime=False)
        ctx = serve(app)
        base = ctx.__enter__()
        with_servers.append(ctx)
        return Server(rt, app, base, create_key(rt, credits=credits, plan="enterprise"), backend)

    yield _start
    for ctx in with_servers:
        ctx.__exit__(None, None, None)


def _png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(raw))


def test_b64_json_returns_n_pngs_of_the_requested_size(start, db_url):
    srv = start(db_url=db_url)
    res = srv.client.images.generate(model="fake", prompt="a red circle", n=2, size="256x256", response_format="b64_json")
    assert len(res.data) == 2
    images = [_png(d.b64_json) for d in res.data]
    assert all(im.size == (256, 256) for im in images)
    assert images[0].tobytes() != images[1].tobytes()  # two images, not one twice
    assert all(d.url is None and d.revised_prompt == "a red circle" for d in res.data)
    assert res.size == "256x256" and res.output_format == "png" and res.background == "opaque"
    assert abs(res.created - time.time()) < 60
    cost = 2.0 * 256 * 256 * 2 / 1e6  # fake model: 2 credits per megapixel
    assert res.usage.model_extra["credits"] == pytest.approx(cost, abs=0.01)
    assert srv.credits() == pytest.approx(1000 - cost, abs=0.01)


def test_url_response_downloads_and_openai_names_pick_their_defaults(start):
    srv = start()
    res = srv.client.images.generate(model="dall-e-2", prompt="x", size="512x512", response_format="url", output_format="jpeg")
    assert len(res.data) == 1 and res.data[0].b64_json is None
    got = httpx.get(res.data[0].url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(got.content)).size == (512, 512)

    # dall-e names (and no model at all) answer with URLs, gpt-image names with base64, as OpenAI does
    assert srv.client.images.generate(prompt="x", size="256x256").data[0].url.startswith(srv.base)
    res = srv.client.images.generate(model="gpt-image-1", prompt="x", size="272x528", output_format="webp")
    raw = base64.b64decode(res.data[0].b64_json)
    im = Image.open(io.BytesIO(raw))
    assert im.format == "WEBP" and im.size == (272, 528)  # any WxH for non-dall-e models
    assert res.size == "272x528" and res.output_format == "webp"


def test_seed_extension_makes_results_repeatable(start):
    srv = start()
    a, b = (
        srv.client.images.generate(model="fake", prompt="p", size="256x256", response_format="b64_json", extra_body={"seed": 5})
        for _ in range(2)
    )
    assert _png(a.data[0].b64_json).tobytes() == _png(b.data[0].b64_json).tobytes()


def test_validation_errors_are_bad_request_in_openai_shape(start):
    srv = start()
    cases = [
        (dict(prompt="x", n=11), "n"),
        (dict(prompt="x", n=0), "n"),
        (dict(prompt="x", size="300x300", model="fake"), "size"),  # not a multiple of 16
        (dict(prompt="x", size="4096x4096", model="fake"), "size"),
        (dict(prompt="x", size="272x528", model="dall-e-3"), "size"),  # dall-e names take OpenAI's sizes only
        (dict(prompt="x", size="big"), "size"),
        (dict(prompt="x", output_format="gif"), "output_format"),
        (dict(prompt="x", quality="ultra"), "quality"),
        (dict(prompt="x", style="baroque"), "style"),
        (dict(prompt="x", output_compression=101), "output_compression"),
        (dict(prompt="x", background="transparent"), "background"),
        (dict(prompt="   "), "prompt"),
        (dict(prompt="x", extra_body={"steps": 51}, model="fake"), "steps"),  # over the model's max_steps
        (dict(prompt="x", extra_body={"colour": "red"}), "colour"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            srv.client.images.generate(**kwargs)
        assert e.value.status_code == 400
        err = e.value.body
        assert err["type"] == "invalid_request_error" and err["param"] == param, (kwargs, err)
        assert err["message"]
    assert srv.executions() == []  # nothing was submitted
    assert srv.credits() == 1000.0


def test_missing_prompt_and_bad_json_over_plain_http(start):
    srv = start()
    url = f"{srv.base}/v1/images/generations"
    auth = {"Authorization": f"Bearer {srv.key}"}
    r = httpx.post(url, json={"n": 1}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_required_parameter"
    r = httpx.post(url, content=b"{nope", headers={**auth, "content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"error"} and r.json()["error"]["type"] == "invalid_request_error"


def test_models_list_unknown_model_and_unsupported_endpoints(start):
    srv = start()
    assert [m.id for m in srv.client.models.list()] == ["fake"]
    with pytest.raises(openai.NotFoundError) as e:
        srv.client.images.generate(model="sdxl-turbo", prompt="x")
    assert e.value.code == "model_not_found" and "fake" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # "fake" takes no input image
        srv.client.images.edit(image=("a.png", io.BytesIO(_png_bytes(64, 64)), "image/png"), prompt="x")
    assert e.value.code == "unsupported_value" and "supports_image_input" in e.value.body["message"]


def test_auth_errors(start):
    srv = start()
    bad = openai.OpenAI(base_url=f"{srv.base}/v1", api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.images.generate(prompt="x")
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    r = httpx.post(f"{srv.base}/v1/images/generations", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_failed_generation_is_500_with_the_engine_message_not_retried_and_refunded(start):
    backend = FakeBackend(fail_with=RuntimeError("CUDA out of memory"))
    srv = start(backend=backend)
    with pytest.raises(openai.InternalServerError) as e:
        srv.client.images.generate(model="fake", prompt="x", size="256x256")
    assert e.value.status_code == 500 and "out of memory" in e.value.body["message"]
    assert e.value.body["type"] == "server_error"
    assert backend.calls == 1  # x-should-retry: false kept the client from submitting it again
    assert srv.credits() == 1000.0


def test_insufficient_credits_is_insufficient_quota(start):
    srv = start(credits=0.01)
    with pytest.raises(openai.RateLimitError) as e:
        srv.client.images.generate(model="fake", prompt="x", size="1024x1024")
    assert e.value.status_code == 429 and e.value.code == "insufficient_quota" and e.value.type == "insufficient_quota"
    assert "credits" in e.value.body["message"]


def test_timeout_is_504_naming_the_execution_which_keeps_running(start):
    srv = start(backend=FakeBackend(steps=100, step_delay=0.05), sync_timeout_s=0.3)
    with pytest.raises(openai.InternalServerError) as e:
        srv.client.images.generate(model="fake", prompt="x", size="256x256")
    assert e.value.status_code == 504 and e.value.code == "timeout"
    [view] = srv.executions()  # one execution: the client did not retry
    assert view.id in e.value.body["message"]
    r = httpx.get(f"{srv.base}/api/v1/executions/{view.id}", headers={"Authorization": f"Bearer {srv.key}"})
    assert r.status_code == 200 and r.json()["status"] in ("QUEUED", "RUNNING")
    httpx.post(f"{srv.base}/api/v1/executions/{view.id}/cancel", headers={"Authorization": f"Bearer {srv.key}"})


def test_waiting_does_not_block_the_server_and_a_client_that_leaves_cancels(start):
    backend = FakeBackend(steps=200, step_delay=0.05)
    srv = start(backend=backend)
    url = httpx.URL(srv.base)
    body = json.dumps({"model": "fake", "prompt": "x", "size": "256x256"}).encode()
    request = (
        f"POST /v1/images/generations HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nAuthorization: Bearer {srv.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((url.host, url.port)) as waiting:  # a client waiting for its image
        waiting.sendall(request)
        assert backend.started.wait(30)
        t0 = time.monotonic()
        assert httpx.get(f"{srv.base}/healthz").status_code == 200
        assert httpx.get(f"{srv.base}/v1/credits", headers={"Authorization": f"Bearer {srv.key}"}).status_code == 200
        assert time.monotonic() - t0 < 3.0  # answered while a request waits on a 10-second generation
    # the client left (its connection closed) before the image was made
    view = wait_for(lambda: next((v for v in srv.executions() if v.status.is_terminal()), None), timeout=10)
    assert view.status == "cancelled"
    assert srv.credits() == 1000.0


# --- edits and variations ------------------------------------------------------------------


EDIT_MODEL = 'path = "/nonexistent"\nprice_per_megapixel = 2.0\ndefault_steps = 4\nsupports_image_input = true'


@pytest.fixture
def edit_server(start):
    backend = RecordingBackend()
    return start(extra_models={"fake-edit": (EDIT_MODEL, backend)}), backend


def _png_bytes(width: int, height: int, mode: str = "RGB", fill=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), fill).save(buf, "PNG")
    return buf.getvalue()


def _left_half_transparent(width: int, height: int) -> bytes:
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()


def test_edit_with_a_mask_is_inpainting_on_the_first_model_that_takes_images(edit_server):
    srv, backend = edit_server
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    res = srv.client.images.edit(
        model="gpt-image-1",
        image=("photo.png", buf.getvalue(), "image/png"),
        mask=("mask.png", _left_half_transparent(96, 64), "image/png"),
        prompt="a red circle on a blue background",
        n=2,
    )
    assert len(res.data) == 2 and all(_png(d.b64_json).size == (384, 256) for d in res.data)  # auto: aspect kept
    assert res.size == "384x256"
    [req] = backend.requests
    assert req.prompt == "a red circle on a blue background" and req.num_images == 2
    assert (req.width, req.height) == (384, 256) and req.strength == pytest.approx(0.95)
    assert np.array_equal(np.asarray(req.init_image.convert("RGB")), np.asarray(photo))
    mask = np.asarray(req.mask_image)
    assert mask.shape == (64, 96) and (mask[:, :48] == 255).all() and (mask[:, 48:] == 0).all()  # transparent = repaint
    cost = 2.0 * 384 * 256 * 2 / 1e6
    assert srv.credits() == pytest.approx(1000 - cost, abs=0.01)


def test_edit_without_mask_is_image_to_image_and_takes_json_with_a_data_url(edit_server):
    srv, backend = edit_server
    data_url = "data:image/png;base64," + base64.b64encode(_png_bytes(40, 30, fill=(10, 200, 10))).decode()
    r = httpx.post(
        f"{srv.base}/v1/images/edits",
        json={"images": [{"image_url": data_url}], "prompt": "make it blue", "size": "512x256", "seed": 7, "strength": 0.3,
              "response_format": "url"},
        headers={"Authorization": f"Bearer {srv.key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    [item] = r.json()["data"]
    assert Image.open(io.BytesIO(httpx.get(item["url"]).content)).size == (512, 256)
    [req] = backend.requests
    assert req.mask_image is None and req.strength == pytest.approx(0.3) and req.seed == 7
    assert req.init_image.size == (40, 30) and req.init_image.getpixel((5, 5))[:3] == (10, 200, 10)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks dall-e-2 variations deprecated
def test_variation_is_image_to_image_without_a_prompt(edit_server):
    srv, backend = edit_server
    res = srv.client.images.create_variation(image=("a.png", _png_bytes(64, 64), "image/png"), n=3, size="256x256",
                                             response_format="b64_json")
    assert [(_png(d.b64_json).size) for d in res.data] == [(256, 256)] * 3
    [req] = backend.requests
    assert req.prompt == "" and req.num_images == 3 and req.init_image.size == (64, 64) and req.mask_image is None


def test_edit_and_variation_errors_are_400_and_charge_nothing(edit_server):
    srv, backend = edit_server
    img = ("a.png", _png_bytes(64, 64), "image/png")

    def bad(call, param, code, text=""):
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.status_code == 400 and e.value.code == code and e.value.param == param, e.value.body
        assert text in e.value.body["message"]

    edit = srv.client.images.edit
    bad(lambda: edit(image=img, mask=("m.png", _png_bytes(64, 64), "image/png"), prompt="x"), "mask", "invalid_image", "alpha")
    bad(lambda: edit(image=img, mask=("m.png", _left_half_transparent(32, 64), "image/png"), prompt="x"), "mask", "invalid_image", "32x64")
    bad(lambda: edit(image=[img, img], prompt="x"), "image", "unsupported_value", "one image")
    bad(lambda: edit(image=("a.png", b"not an image", "image/png"), prompt="x"), "image", "invalid_image")
    bad(lambda: edit(image=img, prompt="x", model="fake"), "model", "unsupported_value", "fake-edit")
    bad(lambda: edit(image=img, prompt="  "), "prompt", "invalid_value")
    bad(lambda: edit(image=img, prompt="x", size="100x100"), "size", "invalid_value")
    auth = {"Authorization": f"Bearer {srv.key}"}
    r = httpx.post(f"{srv.base}/v1/images/edits", files={"mask": img}, data={"prompt": "x"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_required_parameter"
    r = httpx.post(f"{srv.base}/v1/images/edits", files={"image": img}, data={"prompt": "x", "colour": "red"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
    r = httpx.post(f"{srv.base}/v1/images/edits", json={"images": [{"file_id": "file-1"}], "prompt": "x"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "images.0"
    r = httpx.post(f"{srv.base}/v1/images/variations", json={"image": "x"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"
    assert backend.requests == [] and srv.executions() == [] and srv.credits() == 1000.0


# --- streaming -------------------------------------------------------------------------------


def test_streamed_generation_sends_partial_images_then_one_completed_event_per_image(start):
    srv = start(backend=FakeBackend(steps=6, step_delay=0.05))
    events = list(srv.client.images.generate(model="fake", prompt="x", n=2, size="256x256", stream=True, partial_images=2))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"] * 2
    partials, events = events[:2], events[2:]
    assert [p.partial_image_index for p in partials] == [0, 1]
    # the fake backend's previews are flat greys of its step: after steps 2 and 4 of 6
    assert [_png(p.b64_json).getpixel((5, 5)) for p in partials] == [(20, 20, 20), (40, 40, 40)]
    assert partials[0].size == "256x256" and partials[0].output_format == "png" and partials[0].background == "opaque"
    assert all(_png(e.b64_json).size == (256, 256) for e in events)
    assert events[0].size == "256x256" and events[0].output_format == "png" and events[0].background == "opaque"
    assert events[0].b64_json != events[1].b64_json
    cost = 2.0 * 256 * 256 * 2 / 1e6
    assert events[0].usage.model_extra["credits"] == pytest.approx(cost, abs=0.01)
    assert srv.credits() == pytest.approx(1000 - cost, abs=0.01)


def test_partial_images_are_made_only_when_streaming_and_only_as_many_as_asked(start):
    backend = FakeBackend(steps=6)
    srv = start(backend=backend)
    [event] = list(srv.client.images.generate(model="fake", prompt="x", size="256x256", stream=True))
    assert event.type == "image_generation.completed"
    events = list(srv.client.images.generate(model="fake", prompt="x", size="256x256", stream=True, partial_images=3))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 3 + ["image_generation.completed"]
    srv.client.images.generate(model="fake", prompt="x", size="256x256", partial_images=3)  # not streamed: no previews made
    assert [v.nodes[-1].params["previews"] for v in srv.executions()] == [0, 3, 0]


def test_streamed_edit_sends_image_edit_completed(edit_server):
    srv, backend = edit_server
    stream = srv.client.images.edit(image=("a.png", _png_bytes(64, 64), "image/png"), prompt="x", stream=True, partial_images=1)
    [partial, event] = list(stream)
    assert partial.type == "image_edit.partial_image" and partial.partial_image_index == 0
    assert _png(partial.b64_json).size == (256, 256)
    assert event.type == "image_edit.completed" and _png(event.b64_json).size == (256, 256)
    assert len(backend.requests) == 1


def test_stream_keeps_the_connection_alive_and_reports_failure_as_an_error_event(start, monkeypatch):
    from pixelmill.api.dialects import openai_images

    monkeypatch.setattr(openai_images, "KEEPALIVE_S", 0.1)
    srv = start(backend=FakeBackend(steps=6, step_delay=0.1, fail_with=RuntimeError("CUDA out of memory")))
    auth = {"Authorization": f"Bearer {srv.key}"}
    body = {"model": "fake", "prompt": "x", "size": "256x256", "stream": True}
    with httpx.stream("POST", f"{srv.base}/v1/images/generations", json=body, headers=auth, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert ": keep-alive" in text
    assert "event: error" in text and "out of memory" in text
    with pytest.raises(openai.APIError, match="out of memory"):
        list(srv.client.images.generate(model="fake", prompt="x", size="256x256", stream=True))
    assert srv.credits() == 1000.0


def test_a_client_that_leaves_a_stream_cancels_the_execution(start):
    backend = FakeBackend(steps=200, step_delay=0.05)
    srv = start(backend=backend)
    auth = {"Authorization": f"Bearer {srv.key}"}
    body = {"model": "fake", "prompt": "x", "size": "256x256", "stream": True}
    with httpx.stream("POST", f"{srv.base}/v1/images/generations", json=body, headers=auth, timeout=30) as r:
        assert r.status_code == 200
        assert backend.started.wait(5)
    view = wait_for(lambda: next((v for v in srv.executions() if v.status.is_terminal()), None), timeout=10)
    assert view.status == "cancelled"
    assert srv.credits() == 1000.0
