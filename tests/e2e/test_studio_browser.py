"""Studio in a real browser (Debian's Chromium driven by Playwright) against `pixelmill serve`
on the shipped pixelmill-tiny model: sign in, generate with live progress, the canvas pipeline
generate → upscale → remove background, publishing a trigger URL, and the errors a person sees.

Screenshots of the main screens are written to ``test-artifacts/studio/`` (not committed).
The tests share one server and one browser and run in file order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from tests.helpers.studio import ADMIN_KEY, ARTIFACTS, studio_server, wait_until

CHROMIUM = os.environ.get("PIXELMILL_CHROMIUM", "/usr/bin/chromium")

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[test]')")
if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM}: ./run-tests installs it with apt-get install chromium", allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with studio_server(tmp_path_factory.mktemp("studio")) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" and "Content Security Policy" in m.text else None)
    pg.problems = problems
    yield pg
    context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def sign_in(page, base: str, key: str | None, admin: str | None = None) -> None:
    page.goto(base + "/")
    page.evaluate("sessionStorage.clear()")
    page.reload()
    page.wait_for_selector("form[aria-labelledby=signin-title]")
    if key:
        page.fill("input[name=apiKey]", key)
    if admin:
        page.click("text=I also have an admin key")
        page.fill("input[name=adminKey]", admin)
    page.click("button[type=submit]")


def test_sign_in_with_a_key(page, server):
    page.goto(server["base"] + "/")
    page.wait_for_selector("form[aria-labelledby=signin-title]")
    shot(page, "01-sign-in")
    page.fill("input[name=apiKey]", "sk-wrong-key")
    page.click("button[type=submit]")
    page.wait_for_selector("[role=alert]:has-text('check the key')")
    sign_in(page, server["base"], server["key"])
    page.wait_for_selector("h1:has-text('Playground')")
    page.wait_for_selector("[data-testid=credits]:has-text('100')")
    # the key is kept for this tab only, and never in the address
    assert page.evaluate("sessionStorage.getItem('pixelmill.apiKey')") == server["key"]
    assert page.evaluate("Object.keys(localStorage).length") == 0
    assert server["key"] not in page.url


def _small_picture(page, steps: int = 4) -> None:
    page.select_option("select[name=aspect]", "1:1")
    page.select_option("select[name=long]", "256")  # the smallest side pixelmill-tiny makes
    page.fill("input[name=steps]", str(steps))


def test_generate_shows_progress_and_the_image(page, server):
    page.goto(server["base"] + "/#/playground")
    page.fill("textarea[name=prompt]", "a red circle on a blue background")
    _small_picture(page)
    page.select_option("select[name=previews]", "1")
    page.wait_for_selector("[data-testid=estimate] strong")
    price = float(page.inner_text("[data-testid=estimate] strong"))
    assert price > 0
    page.click("button:has-text('Generate')")
    job = page.wait_for_selector("[data-testid=job]")
    page.wait_for_selector("[role=progressbar]")
    shot(page, "02-playground-running")
    page.wait_for_selector("[data-testid=job][data-status=COMPLETED]", timeout=180_000)
    img = page.wait_for_selector("[data-testid=gallery] img")
    wait_until(lambda: img.evaluate("i => i.complete && i.naturalWidth") == 256)
    charged = page.inner_text("[data-testid=charged]")
    assert re.search(r"Charged\s+[0-9.]+\s+credits", charged), charged
    assert "seed" in page.inner_text("[data-testid=gallery]")
    # the seed of a result goes back into the form
    page.click("button:has-text('Use this seed')")
    assert page.input_value("#pg-seed") != ""
    page.click("text=Python · OpenAI")
    assert "images.generate" in page.inner_text("[data-testid=snippet]")
    shot(page, "03-playground-result")
    assert not job.evaluate("j => j.querySelector('.error')")
    assert not page.problems, page.problems


def test_a_validation_problem_is_shown_on_its_field(page, server):
    page.goto(server["base"] + "/#/playground")
    page.select_option("select[name=aspect]", "custom")
    page.fill("input[name=width]", "32")
    err = page.wait_for_selector("[data-testid=field-error]")
    assert "32" in err.inner_text()  # the API's message about this value
    assert page.get_attribute("input[name=width]", "aria-invalid") == "true"
    shot(page, "04-playground-validation")
    page.fill("input[name=width]", "256")
    page.wait_for_selector("[data-testid=estimate] strong")


def test_inpainting_with_a_painted_mask(page, server, tmp_path):
    from PIL import Image

    picture = tmp_path / "input.png"
    Image.new("RGB", (256, 256), (30, 60, 200)).save(picture)
    page.goto(server["base"] + "/#/playground")
    page.set_input_files("[data-testid=image-input]", str(picture))
    page.click("button:has-text('Paint a mask')")
    canvas = page.wait_for_selector("[data-testid=mask-canvas]")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.fill("textarea[name=prompt]", "a red circle on a blue background")
    _small_picture(page, steps=2)
    page.wait_for_selector("[data-testid=estimate] strong")
    shot(page, "05-playground-inpainting")
    page.click("button:has-text('Generate')")
    page.wait_for_selector("[data-testid=job][data-status=COMPLETED]", timeout=180_000)
    page.click("button:has-text('Remove image')")


def test_canvas_generate_upscale_remove_background(page, server):
    page.goto(server["base"] + "/#/workflows/new")
    page.wait_for_selector("[data-testid=add-text_to_image]")
    page.click("[data-testid=add-text_to_image]")
    page.click("[data-testid=add-upscale]")
    page.click("[data-testid=add-remove_background]")
    for node in ("generate", "upscale", "cutout"):
        page.wait_for_selector(f"[data-testid=node-{node}]")
    assert page.locator(".react-flow__edge").count() == 2  # wired in order, image to image
    page.click("[data-testid=node-generate] .pm-node-head")
    page.fill("#p-generate-prompt", "a yellow square on a green background")
    page.fill("#p-generate-width", "32")
    page.wait_for_selector("[data-testid=problems-generate]")  # the problem shows on the node
    page.wait_for_selector("[data-field=width] .field-error")  # and on its field
    page.fill("#p-generate-width", "256")
    page.fill("#p-generate-height", "256")
    page.fill("#p-generate-steps", "4")
    page.wait_for_selector("[data-testid=total-price] strong")
    page.fill("input[aria-label='Workflow name']", "Cut-out pipeline")
    page.click("button:has-text('Run')")
    wait_until(lambda: re.search(r"#/workflows/[0-9a-f-]{20,}", page.evaluate("location.hash")))  # saved: the page moved to it
    for node in ("generate", "upscale", "cutout"):
        page.wait_for_selector(f"[data-testid=node-{node}][data-status=COMPLETED]", timeout=180_000)
        page.wait_for_selector(f"[data-testid=outputs-{node}] img")
    page.wait_for_selector("[data-testid=run-status][data-status=COMPLETED]")
    shot(page, "06-canvas-completed")
    sizes = lambda: [page.eval_on_selector(f"[data-testid=outputs-{n}] img", "i => i.complete && i.naturalWidth") for n in ("generate", "upscale")]
    wait_until(lambda: sizes() == [256, 512])
    assert not page.problems, page.problems


def test_publish_and_call_the_trigger_url(page, server):
    assert re.search(r"#/workflows/[0-9a-f-]{20,}", page.evaluate("location.hash"))  # the saved workflow of the previous test
    server["workflow_url"] = page.evaluate("location.href")
    page.click("button:has-text('Publish')")
    url = page.inner_text("[data-testid=trigger-url]")
    assert url.startswith(server["base"] + "/api/v1/hooks/")
    r = httpx.post(url, json={})  # no key: the URL is the credential
    assert r.status_code == 202, r.text
    page.click("button:has-text('Call it now')")
    page.wait_for_selector("[data-testid=trigger-response]:has-text('HTTP 202')")
    shot(page, "07-canvas-published")
    eid = r.json()["executionId"]
    page.goto(server["base"] + f"/#/runs/{eid}")
    page.wait_for_selector("[data-testid=run-detail][data-status=COMPLETED]", timeout=180_000)
    page.goto(server["base"] + "/#/runs")
    page.wait_for_selector("[data-testid=runs-table]")
    assert page.locator("[data-testid=runs-table] tbody tr").count() >= 3
    shot(page, "08-runs")


def test_batch_runs_from_a_table_of_inputs(page, server):
    page.goto(server["workflow_url"])  # the published workflow
    page.wait_for_selector("[data-testid=node-generate]")
    page.click("[data-testid=node-generate] .pm-node-head")
    page.click("[data-field=prompt] button:has-text('as input')")  # the prompt becomes a workflow input
    page.wait_for_selector("[data-testid=bound-prompt]")
    batch = page.wait_for_selector("[data-testid=batch]")
    page.click("button:has-text('Add row')")
    page.fill("input[aria-label='prompt for run 1']", "a red circle on a blue background")
    page.fill("input[aria-label='prompt for run 2']", "a green square on a yellow background")
    page.click("button:has-text('Run batch of 2')")
    page.wait_for_selector("[data-testid=batch-runs] li:nth-child(2)")
    wait_until(lambda: page.locator("[data-testid=batch-runs] .badge.COMPLETED").count() == 2, timeout=240)
    shot(page, "08a-canvas-batch")
    assert batch.is_visible()


def test_rerun_a_bfl_request_and_open_it_in_the_canvas(page, server):
    prompt = "a blue triangle on a white background"
    r = httpx.post(
        server["base"] + "/v1/flux-dev", headers={"x-key": server["key"]},
        json={"prompt": prompt, "width": 256, "height": 256, "steps": 2, "output_format": "png"},
    )
    assert r.status_code == 200, r.text
    eid = r.json()["id"]
    page.goto(server["base"] + f"/#/runs/{eid}")
    page.wait_for_selector("[data-testid=run-detail][data-status=COMPLETED]", timeout=180_000)
    page.click("[data-testid=rerun]")
    wait_until(lambda: re.fullmatch(r"#/runs/[0-9a-f-]{20,}", page.evaluate("location.hash")) and eid not in page.evaluate("location.hash"))
    again = page.evaluate("location.hash").rsplit("/", 1)[1]
    page.wait_for_selector("[data-testid=run-detail][data-status=COMPLETED]", timeout=180_000)
    img = page.wait_for_selector("[data-testid=noderun-generate] img")
    wait_until(lambda: img.evaluate("i => i.complete && i.naturalWidth") == 256)
    shot(page, "08b-runs-rerun")
    graph = httpx.get(server["base"] + f"/api/v1/executions/{again}?include=graph", headers={"x-key": server["key"]}).json()["graph"]
    assert graph["nodes"]["generate"]["params"]["prompt"] == prompt  # the same graph, submitted again
    page.click("button:has-text('Open in canvas')")
    page.wait_for_selector("[data-testid=node-generate]")
    assert page.evaluate("location.hash") == "#/workflows/new"
    page.click("[data-testid=node-generate] .pm-node-head")
    assert page.input_value("#p-generate-prompt") == prompt
    shot(page, "08c-canvas-from-a-run")
    assert not page.problems, page.problems


def test_account_and_webhooks_pages(page, server):
    page.goto(server["base"] + "/#/account")
    page.wait_for_selector("[data-testid=usage-chart]")
    shot(page, "09-credits-usage")
    # the account's keys: the one signed in, then a new one (its secret shown once) that is revoked again
    page.wait_for_selector("[data-testid=keys-table] tbody tr:has-text('this browser')")
    assert page.locator("[data-testid=keys-table] tbody tr").count() == 1
    assert server["key"] not in page.content()
    page.fill("input[name=keyName]", "ci runner")
    page.click("button:has-text('Create key')")
    secret = page.inner_text("[data-testid=new-key-secret]").strip()
    assert secret.startswith("sk-")
    assert httpx.get(server["base"] + "/api/v1/account", headers={"x-key": secret}).json()["name"] == "studio"
    row = f"[data-testid='key-{secret[:10]}']"
    page.wait_for_selector(f"{row}:has-text('ci runner')")
    shot(page, "09a-account-key-created")
    page.click("button:has-text('I have saved it')")
    page.wait_for_selector("[data-testid=new-key]", state="detached")
    assert secret not in page.content()  # shown once
    page.click(f"{row} button:has-text('Revoke…')")
    page.wait_for_selector(f"{row}:has-text('stops working at once')")
    shot(page, "09b-account-key-revoke")
    page.click(f"{row} button:has-text('Revoke key')")
    page.wait_for_selector(row, state="detached")
    r = httpx.get(server["base"] + "/api/v1/account", headers={"x-key": secret})
    assert r.status_code == 403 and r.json()["error"]["code"] == "revoked_api_key"
    assert page.locator("[data-testid=keys-table] tbody tr").count() == 1
    page.goto(server["base"] + "/#/webhooks")
    page.wait_for_selector("[data-testid=webhook-secret]")
    shot(page, "10-webhooks")


def test_402_shows_the_breakdown(page, server):
    sign_in(page, server["base"], server["poor"])
    page.wait_for_selector("h1:has-text('Playground')")
    _small_picture(page)
    page.wait_for_selector("[data-testid=estimate] strong")
    page.click("button:has-text('Generate')")
    box = page.wait_for_selector("[data-testid=error-box].status-402")
    assert "Not enough credits" in box.inner_text()
    page.wait_for_selector("[data-testid=credit-breakdown] td:has-text('generate')")
    shot(page, "11-playground-402")


def test_admin_pages_with_an_admin_key(page, server):
    sign_in(page, server["base"], None, ADMIN_KEY)
    page.wait_for_selector("h1:has-text('Admin')")
    page.wait_for_selector("table.list td:has-text('studio')")
    shot(page, "12-admin-accounts")
    page.click("table.list a:has-text('poor')")
    page.wait_for_selector("h1:has-text('poor')")
    page.fill("input[type=number][required]", "5")
    page.click("button:has-text('Grant')")
    page.wait_for_selector(".stat .big-number:has-text('5')")


def test_phone_width(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.goto(server["base"] + "/")
    pg.fill("input[name=apiKey]", server["key"])
    pg.click("button[type=submit]")
    pg.wait_for_selector("h1:has-text('Playground')")
    # nothing wider than the screen
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    shot(pg, "13-phone-playground")
    pg.click("button[aria-label=Menu]")
    pg.wait_for_selector(".sidebar a:has-text('Runs')").click()
    pg.wait_for_selector("h1:has-text('Runs')")
    context.close()
