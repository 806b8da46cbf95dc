"""README.md's code blocks run against a real ``pixelmill serve``: the README cannot drift from the product.

Every fenced block is either executed here (only the base URL, the key and placeholders such as ``<id>``
are substituted) or marked, on the line before it, with ``<!-- not-run: why -->``.  The command synopsis is
checked against the CLI (every command and option it names exists) and its safe commands are run.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.test_serve_subprocess import PIXELMILL, free_port, stop, wait_until_serving

README = Path(__file__).resolve().parents[2] / "README.md"
README_BASE = "http://127.0.0.1:8000"
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(.+?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None

    @property
    def kind(self) -> str | None:
        """Which runner below executes this block."""
        if self.lang == "bash" and "curl" in self.code and "/v1/get_result" in self.code:
            return "curl"
        if self.lang == "python" and "from pixelmill.client import Client" in self.code:
            return "client"
        if self.lang == "python" and "from standardwebhooks import Webhook" in self.code:
            return "webhook"
        if self.lang == "python" and "from pixelmill import recipes" in self.code:
            return "recipe"
        if self.lang == "" and re.search(r"^pixelmill serve\b", self.code, re.M):
            return "commands"
        return None


def readme_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        i += 1
        body = []
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(prev)
        blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", marker.group(1) if marker else None))
    return blocks


def the_block(kind: str) -> Block:
    found = [b for b in readme_blocks() if b.kind == kind and b.not_run is None]
    assert len(found) == 1, f"README.md should have exactly one runnable {kind!r} block, found {len(found)}"
    return found[0]


def test_every_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    assert len(blocks) >= 5
    unclaimed = [f"README.md:{b.line} ({b.lang or 'plain'})" for b in blocks if b.not_run is None and b.kind is None]
    assert not unclaimed, f"blocks neither run by this test nor marked <!-- not-run: why -->: {unclaimed}"


# ------------------------------------------------------------------------------------------- the server


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[bytes, dict[str, str]]] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        Receiver.received.append((body, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    Receiver.received = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook"
    srv.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A fresh data directory with no configuration: the shipped pixelmill-tiny serves every request."""
    tmp = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
    env.update({"PIXELMILL_DATA_DIR": str(tmp / "data"), "HF_HUB_OFFLINE": "1",
                "PIXELMILL_URL_ALLOW_NETWORKS": "127.0.0.0/8"})  # the webhook receiver below runs on loopback
    # what the README calls `.venv/bin/pixelmill` (and `pixelmill`), run from a scratch folder
    work = tmp / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    shim = work / ".venv" / "bin" / "pixelmill"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pixelmill.cli "$@"\n')
    shim.chmod(0o755)
    env["PATH"] = f"{shim.parent}{os.pathsep}{env.get('PATH', '')}"
    key = json.loads(subprocess.check_output(PIXELMILL + ["keys", "create", "--account", "readme", "--json"], env=env))["key"]
    port = free_port()
    proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc)
        yield {"base": base, "key": key, "env": env, "work": work}
    finally:
        stop(proc)


def keys_in(comment: str) -> set[str]:
    """The field names an example answer in a comment shows: ``{id, cost}`` or ``{"id": …, "result": {"seed": …}}``."""
    quoted = set(re.findall(r'"(\w+)"\s*:', comment))
    return quoted or set(re.findall(r"\w+", comment.split("{", 1)[1].split("}", 1)[0]))


def flat_keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in flat_keys(v)}
    return set()


# ------------------------------------------------------------------------------------------- the blocks


def test_curl_round_trip(server):
    """Each paragraph of the block runs in bash, in order, sharing its variables; `<id>` and `<sample url>`
    are what the earlier answers said, and the poll repeats until the status is no longer Pending."""
    block = the_block("curl")
    work, env = server["work"], server["env"]
    state = work / "state.sh"
    answers: dict[str, dict] = {}
    paragraphs = [p for p in re.split(r"\n\s*\n", block.code.replace(README_BASE, server["base"])) if p.strip()]
    for para in paragraphs:
        if "<id>" in para:
            para = para.replace("<id>", answers["submit"]["id"])
        if "<sample url>" in para:
            para = para.replace("<sample url>", answers["result"]["result"]["sample"])
        script = f"set -a; [ -f {state} ] && . {state}; set -e -o pipefail\n{para}\nexport -p > {state}\n"
        deadline = time.monotonic() + 240  # generous: a loaded machine; idle it is seconds
        while True:
            run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, f"README.md:{block.line}: {para}\n{run.stdout}\n{run.stderr}"
            if "/v1/get_result" not in para or json.loads(run.stdout)["status"] != "Pending" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        comments = (re.search(r"(?:^|\s)#\s(.*)", line) for line in para.splitlines())
        example = "\n".join(c.group(1) for c in comments if c and "{" in c.group(1))
        if "-X POST" in para:
            answers["submit"] = json.loads(run.stdout)
            assert keys_in(example) == set(answers["submit"]), (example, run.stdout)
            sent = json.loads(re.search(r"-d '(.*?)'", para, re.S).group(1))
        elif "/v1/get_result" in para:
            answers["result"] = json.loads(run.stdout)
            assert answers["result"]["status"] == "Ready", run.stdout
            assert keys_in(example) <= flat_keys(answers["result"]), (example, run.stdout)
            assert answers["result"]["result"]["seed"] == sent["seed"]
        elif "/v1/credits" in para:
            assert keys_in(example) == set(json.loads(run.stdout)), (example, run.stdout)
    assert set(answers) == {"submit", "result"}
    out = re.search(r"-o (\S+)", block.code).group(1)
    image = Image.open(work / out)
    assert image.format == sent["output_format"].upper() and image.size == (sent["width"], sent["height"])


def test_python_client_and_webhook_verification(server, receiver, monkeypatch, capsys):
    """The client example runs as written; the account's webhook for that generation verifies with the
    webhook snippet, and the same snippet refuses a forged body."""
    base, key = server["base"], server["key"]
    with httpx.Client(base_url=base, headers={"x-key": key}, timeout=30) as http:
        assert http.put("/api/v1/webhooks/config", json={"url": receiver}).status_code == 200
        secret = http.get("/api/v1/webhooks/secret").json()["key"]
    monkeypatch.chdir(server["work"])
    client = the_block("client")
    exec(compile(client.code.replace(README_BASE, base), f"README.md:{client.line}", "exec"), {"KEY": key})
    printed = capsys.readouterr().out
    assert "execution.completed" in printed or "execution.succeeded" in printed, printed
    assert Image.open("out.png").size == (256, 256)

    deadline = time.monotonic() + 30
    while not any(b'"execution.completed"' in body for body, _ in Receiver.received) and time.monotonic() < deadline:
        time.sleep(0.2)
    body, headers = next((b, h) for b, h in Receiver.received if b'"execution.completed"' in b)
    snippet = the_block("webhook")
    assert '"whsec_..."' in snippet.code
    code = compile(snippet.code.replace('"whsec_..."', repr(secret)), f"README.md:{snippet.line}", "exec")
    exec(code, {"raw_body": body, "headers": headers})
    with pytest.raises(Exception, match="(?i)signature"):
        exec(code, {"raw_body": body.replace(b"completed", b"failed"), "headers": headers})


def test_recipe_example():
    block = the_block("recipe")
    scope: dict = {}
    exec(compile(block.code, f"README.md:{block.line}", "exec"), scope)
    graph = scope["graph"]
    nodes = graph["nodes"] if isinstance(graph, dict) and "nodes" in graph else graph
    assert "text_to_image" in json.dumps(nodes, default=str)


# ------------------------------------------------------------------------------------------- the commands


def synopsis() -> list[list[str]]:
    """Each command the synopsis names, as its words (``generate "…" -o out.png --model M …``)."""
    commands = []
    for line in the_block("commands").code.splitlines():
        line = re.split(r"\s{2,}", line.strip())[0]  # drop the description column
        if not line.startswith("pixelmill "):
            continue
        for alternative in line[len("pixelmill "):].split(" | "):
            commands.append(shlex.split(alternative.replace("[", " ").replace("]", " ")))
    return commands


def test_synopsis_names_real_commands_and_options():
    import typer.main

    from pixelmill.cli import app

    root = typer.main.get_command(app)
    assert len(synopsis()) >= 10
    for words in synopsis():
        cmd, i = root, 0
        while hasattr(cmd, "commands") and i < len(words) and words[i] in cmd.commands:
            cmd, i = cmd.commands[words[i]], i + 1
        assert not hasattr(cmd, "commands"), f"`pixelmill {' '.join(words)}`: no such command"
        options = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        named = {w for w in words[i:] if w.startswith("-")}
        assert named <= options, f"`pixelmill {' '.join(words[:i])}` has no {sorted(named - options)}"


PLACEHOLDERS = {"NAME": "readme-cli", "N": "2", "S": "7", "K": "1", "M": "pixelmill-tiny", "512x512": "256x256"}
SAFE = {("init",), ("generate",), ("models", "list"), ("keys", "create"), ("keys", "list"), ("migrate",)}


def test_safe_commands_run(server):
    """`init`, `migrate`, `keys create|list`, `models list` on the data directory, and `generate` against the
    server, as the synopsis writes them (placeholders filled in)."""
    env, work = dict(server["env"]), server["work"]
    env["PIXELMILL_API_KEY"] = server["key"]
    ran = set()
    for words in synopsis():
        path = tuple(w for w in words[:2] if w.isidentifier() or "-" in w and not w.startswith("-"))
        path = path if path in SAFE else path[:1]
        if path not in SAFE:
            continue
        args = [PLACEHOLDERS.get(w, w) for w in words]
        if path == ("generate",):
            args += ["--server", server["base"]]
        run = subprocess.run(PIXELMILL + args, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"pixelmill {shlex.join(args)}\n{run.stdout}\n{run.stderr}"
        ran.add(path)
        if path == ("models", "list"):
            assert "pixelmill-tiny" in run.stdout
        if path == ("keys", "list"):
            assert "readme-cli" in run.stdout
        if path == ("generate",):
            out = args[args.index("-o") + 1]
            assert Image.open(work / out).size == (256, 256)
    assert ran == SAFE
