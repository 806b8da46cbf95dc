"""training/train_tiny.py end to end on a tiny budget: every stage runs and the folder serves.

The real recipe takes about 85 minutes; here each stage gets a handful of
steps, which is enough to show that the script writes a diffusers folder that
pixelmill's backend loads and generates from, for both VAE factors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))


@pytest.mark.slow
@pytest.mark.parametrize("factor", [16, 8])
def test_every_stage_runs_and_the_folder_serves(tmp_path, factor):
    from pixelmill.models.base import StepControl, TextToImageRequest
    from pixelmill.models.catalog import ModelSpec
    from pixelmill.models.diffusers_backend import DiffusersBackend

    out = tmp_path / "tiny"
    cmd = [
        sys.executable, str(ROOT / "training" / "train_tiny.py"), "--out", str(out), "--run-dir", str(tmp_path / "runs"),
        "--threads", "1", "--vae-factor", str(factor), "--vae-steps", "3", "--vae-pool", "16", "--pool", "16",
        "--steps", "3", "--warmup", "1", "--decoder-minutes", "0.01", "--eval", "1", "--default-steps", "2",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out quick eval" in done.stdout
    assert (tmp_path / "runs" / "vae_reconstruction_refined.png").is_file()

    meta = json.loads((out / "pixelmill.json").read_text())
    assert meta["train_steps"] == 3 and meta["default_steps"] == 2 and meta["max_sequence_length"] == 16
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["base_image_seq_len"] == (256 // (2 * factor)) ** 2  # tokens of a 256x256 image

    backend = DiffusersBackend(ModelSpec(name="trained", path=str(out), device="cpu", dtype="float32"))
    backend.load()
    images = backend.generate(TextToImageRequest(prompt="a red circle on a blue background", width=320, height=256, seed=1),
                              StepControl())
    assert isinstance(images[0], Image.Image) and images[0].size == (320, 256)

    if factor == 16:  # --resume continues the flow training of that folder and counts its steps on
        again = [*cmd[:3], str(tmp_path / "tiny-2"), *cmd[4:], "--resume", str(out), "--decoder-minutes", "0"]
        done = subprocess.run(again, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((tmp_path / "tiny-2" / "pixelmill.json").read_text())["train_steps"] == 6
        vae = "vae/diffusion_pytorch_model.safetensors"
        assert (tmp_path / "tiny-2" / vae).read_bytes() == (out / vae).read_bytes()  # the VAE is kept
        for config in (tmp_path / "tiny-2").glob("*/config.json"):  # no path of the training machine is saved
            assert "_name_or_path" not in json.loads(config.read_text()), config


def test_shape_weights_sit_where_the_named_shape_differs_from_the_others():
    from train_tiny import shape_tokens

    from pixelmill.models.tiny.scenes import parse_prompt

    scene = parse_prompt("a big red square on a blue background")  # centred, 0.56 of the side: tokens 1-6
    w = shape_tokens(scene, 256, 256).view(8, 8)
    # the box's corner tokens are where a square, a circle, a triangle and a cross differ most ...
    assert min(w[2, 2], w[2, 5], w[5, 2], w[5, 5]) > 0.9
    # ... the centre, which every shape covers, hardly counts, and the background far away not at all
    assert w[3:5, 3:5].max() < 0.2
    assert w[0].max() == 0 and w[:, 0].max() == 0 and w[7].max() == 0 and w[:, 7].max() == 0
    fine = shape_tokens(scene, 256, 256, px=16)
    assert fine.shape == (256,)
