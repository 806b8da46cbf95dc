"""Background removal with the real MediaPipe selfie model and small hand-built ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pixelmill.models.background import BackgroundRemover, available_background_models
from pixelmill.models.base import GenerationCancelled, StepControl

needs_selfie = pytest.mark.skipif("selfie" not in available_background_models(), reason="mediapipe not installed")


def portrait(width: int = 256, height: int = 320) -> Image.Image:
    """A shaded head-and-shoulders figure (face, hair, eyes, mouth) on a plain backdrop."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas = np.stack([170 + 30 * ys / height, 180 + 20 * ys / height, 190 + 10 * xs / width], -1)
    shade = np.clip(1.0 - 0.5 * np.abs(xs - width / 2) / (width / 2), 0, 1)[..., None]
    cloth = np.array([40, 55, 110], np.float32) * (0.6 + 0.6 * shade)
    skin = np.array([225, 175, 145], np.float32) * (0.75 + 0.3 * shade)

    def layer(draw_shape) -> np.ndarray:
        mask = Image.new("L", (width, height), 0)
        draw_shape(ImageDraw.Draw(mask))
        return np.asarray(mask.filter(ImageFilter.GaussianBlur(2)), np.float32)[..., None] / 255

    body = layer(
        lambda d: (
            d.ellipse((width * 0.08, height * 0.62, width * 0.92, height * 1.35), fill=255),
            d.rectangle((width * 0.4, height * 0.5, width * 0.6, height * 0.7), fill=255),
        )
    )
    canvas = canvas * (1 - body) + body * np.where((ys < height * 0.66)[..., None], skin, cloth)
    head = layer(lambda d: d.ellipse((width * 0.3, height * 0.14, width * 0.7, height * 0.58), fill=255))
    radius = np.sqrt(((xs - width * 0.45) / (width * 0.2)) ** 2 + ((ys - height * 0.33) / (height * 0.22)) ** 2)
    canvas = canvas * (1 - head) + head * skin * (1.05 - 0.35 * np.clip(radius, 0, 1)[..., None])
    hair = layer(lambda d: d.chord((width * 0.28, height * 0.11, width * 0.72, height * 0.45), 180, 360, fill=255))
    canvas = canvas * (1 - hair) + hair * np.array([60, 40, 30], np.float32)

    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for eye_x in (0.41, 0.59):
        draw.ellipse((width * eye_x - 6, height * 0.33 - 4, width * eye_x + 6, height * 0.33 + 4), fill=(40, 30, 30))
    draw.arc((width * 0.43, height * 0.42, width * 0.57, height * 0.5), 20, 160, fill=(150, 60, 60), width=3)
    return image


def corner_alpha(alpha: np.ndarray, size: int = 24) -> float:
    return float(np.mean([alpha[:size, :size], alpha[:size, -size:]]))


@needs_selfie
def test_selfie_cuts_out_a_drawn_person():
    image = portrait()
    out = BackgroundRemover("selfie").remove(image)

    assert out.mode == "RGBA" and out.size == image.size
    alpha = np.asarray(out.getchannel("A"))
    assert corner_alpha(alpha) < 10  # backdrop transparent
    assert alpha[150:200, 100:156].mean() > 230  # face and neck opaque
    assert alpha[280:, 60:200].mean() > 230  # shoulders opaque
    assert np.array_equal(np.asarray(out.convert("RGB"))[alpha == 255], np.asarray(image)[alpha == 255])


@needs_selfie
def test_selfie_cuts_out_a_photographed_person():
    matplotlib = pytest.importorskip("matplotlib")
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip("matplotlib sample photo not installed")
    with Image.open(path) as photo:
        image = photo.convert("RGB")  # 512x600 portrait

    alpha = np.asarray(BackgroundRemover("selfie", threshold=0.5).remove(image).getchannel("A"))

    assert set(np.unique(alpha)) <= {0, 255}
    assert corner_alpha(alpha, 48) < 10
    assert alpha[250:400, 180:330].mean() > 240  # face
    assert 0.3 < (alpha > 0).mean() < 0.8


@needs_selfie
def test_progress_reaches_one_and_cancel_is_honoured():
    seen: list[float] = []
    BackgroundRemover().remove(portrait(96, 120), StepControl(on_progress=seen.append))
    assert seen[-1] == 1.0 and seen == sorted(seen)

    control = StepControl()
    control.cancel()
    with pytest.raises(GenerationCancelled):
        BackgroundRemover().remove(portrait(96, 120), control)


@needs_selfie
def test_existing_transparency_is_kept():
    image = portrait(128, 160).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 100))
    alpha = np.asarray(BackgroundRemover().remove(image).getchannel("A"))
    assert alpha.max() <= 100


# --- ONNX saliency models, built here with onnx.helper -------------------------------------------

try:
    import onnx
    from onnx import TensorProto, helper
except ImportError:  # the onnx package only builds the test models
    onnx = None

needs_onnx = pytest.mark.skipif(onnx is None, reason="the onnx package is needed to build test models")


def save_model(path: Path, nodes, outputs, initializers=(), input_shape=(1, 3, 32, 32)) -> str:
    graph = helper.make_graph(
        nodes,
        "saliency",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(input_shape))],
        outputs,
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def brightness_model(path: Path, logits: bool = False, input_shape=(1, 3, 32, 32)) -> str:
    """Saliency = sigmoid(50 * mean over channels of the normalised input): bright -> 1, dark -> 0."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "gain"], ["score"]),
    ]
    if not logits:
        nodes.append(helper.make_node("Sigmoid", ["score"], ["saliency"]))
    gain = helper.make_tensor("gain", TensorProto.FLOAT, [], [50.0])
    out_name = "score" if logits else "saliency"
    out_shape = [input_shape[0], 1, input_shape[2], input_shape[3]]
    output = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)
    return save_model(path, nodes, [output], [gain], input_shape)


def half_white(width: int = 90, height: int = 60) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, width // 2 - 1, height - 1), fill=(255, 255, 255))
    return image


@needs_onnx
def test_onnx_known_mask_is_resized_to_the_image(tmp_path):
    mask = np.zeros((1, 1, 32, 32), np.float32)
    mask[..., 8:24, 8:24] = 1.0  # centre square
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "mask"], ["saliency"]),
    ]
    initializers = [
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("mask", TensorProto.FLOAT, [1, 1, 32, 32], mask.ravel().tolist()),
    ]
    path = save_model(
        tmp_path / "square.onnx", nodes, [helper.make_tensor_value_info("saliency", TensorProto.FLOAT, [1, 1, 32, 32])], initializers
    )
    image = Image.new("RGB", (200, 100), (120, 130, 140))

    out = BackgroundRemover("onnx", onnx_path=path).remove(image)

    assert out.mode == "RGBA" and out.size == (200, 100)
    alpha = np.asarray(out.getchannel("A"))
    assert alpha[40:60, 80:120].min() == 255  # centre of the square
    assert alpha[:15, :].max() == 0 and alpha[:, :40].max() == 0  # outside it
    assert np.asarray(out.convert("RGB"))[50, 100].tolist() == [120, 130, 140]


@needs_onnx
def test_onnx_input_uses_imagenet_normalisation(tmp_path):
    path = brightness_model(tmp_path / "bright.onnx")
    alpha = np.asarray(BackgroundRemover("onnx", onnx_path=path).remove(half_white()).getchannel("A"))
    # black normalises to about -2: sigmoid(-100) = 0; without normalisation it would be sigmoid(0) = 128
    assert alpha[:, :40].min() > 250
    assert alpha[:, 50:].max() < 5


@needs_onnx
def test_onnx_logit_output_goes_through_sigmoid_and_threshold_is_binary(tmp_path):
    path = brightness_model(tmp_path / "logits.onnx", logits=True)
    alpha = np.asarray(BackgroundRemover("onnx", onnx_path=path, threshold=0.5).remove(half_white()).getchannel("A"))
    assert set(np.unique(alpha)) == {0, 255}
    assert alpha[:, :40].min() == 255 and alpha[:, 50:].max() == 0


@needs_onnx
def test_onnx_dynamic_input_size_and_custom_normalisation(tmp_path):
    path = brightness_model(tmp_path / "dynamic.onnx", input_shape=("batch", 3, "height", "width"))
    remover = BackgroundRemover("onnx", onnx_path=path, input_size=64, mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
    out = remover.remove(half_white(70, 50))
    alpha = np.asarray(out.getchannel("A"))
    assert out.size == (70, 50)
    assert alpha[:, :30].min() > 250 and alpha[:, 40:].max() < 5


def test_bad_configuration_is_refused(tmp_path):
    with pytest.raises(ValueError, match="onnx_path"):
        BackgroundRemover("onnx")
    with pytest.raises(ValueError, match="not found"):
        BackgroundRemover("onnx", onnx_path=str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match="unknown background model"):
        BackgroundRemover("rembg")
    with pytest.raises(ValueError, match="threshold"):
        BackgroundRemover(threshold=1.5)
    assert "onnx" in available_background_models()
    assert "onnx" not in available_background_models(onnx_path=str(tmp_path / "missing.onnx"))


# ---------------------------------------------------------------- objects (the default)


def test_default_is_the_subject_cutout_and_keeps_a_generated_object():
    """generate -> upscale -> remove_background on the shipped model keeps the object (it used to vanish)."""
    import torch
    from diffusers import DiffusionPipeline

    from pixelmill.models.tiny import WEIGHTS_DIR, model_defaults
    from pixelmill.models.upscale import upscale_to_factor

    torch.set_num_threads(2)
    pipe = DiffusionPipeline.from_pretrained(WEIGHTS_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    d = model_defaults()
    image = pipe(
        "a red circle on a white background", width=256, height=256, num_inference_steps=d["default_steps"],
        guidance_scale=d["default_guidance"], generator=torch.Generator().manual_seed(3),
        negative_prompt="", true_cfg_scale=d.get("default_true_cfg", 1.0), max_sequence_length=d.get("max_sequence_length", 512),
    ).images[0]
    image = upscale_to_factor(image, 2)
    rgb = np.asarray(image.convert("RGB")).astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)
    assert red.mean() > 0.03  # the model drew a red object

    alpha = np.asarray(BackgroundRemover().remove(image).getchannel("A"))

    assert alpha[red].mean() > 230
    assert corner_alpha(alpha, 48) < 10
    assert (alpha > 127).mean() < red.mean() * 1.6


def test_objects_on_plain_backdrops_are_cut_out_with_iou_above_0_9():
    from pixelmill.models.background_eval import cutout_set, iou

    cases = cutout_set()[::3]
    by_kind: dict[str, list[float]] = {}
    remover = BackgroundRemover("auto")
    for case in cases:
        alpha = np.asarray(remover.remove(case.image).getchannel("A"))
        by_kind.setdefault(case.kind, []).append(iou(alpha, case.mask))
    assert set(by_kind) == {"scene", "product", "photo"}
    for kind, scores in by_kind.items():
        assert np.mean(scores) >= 0.9, (kind, scores)
        assert min(scores) >= 0.75, (kind, scores)


@needs_selfie
def test_auto_cuts_out_a_person_on_a_busy_photo():
    matplotlib = pytest.importorskip("matplotlib")
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip("matplotlib sample photo not installed")
    with Image.open(path) as photo:
        image = photo.convert("RGB")

    alpha = np.asarray(BackgroundRemover("auto", threshold=0.5).remove(image).getchannel("A"))

    assert corner_alpha(alpha, 48) < 10
    assert alpha[250:400, 180:330].mean() > 240  # face
    assert 0.3 < (alpha > 0).mean() < 0.8


def test_subject_keeps_an_object_touching_the_edge_and_drops_its_shadow():
    image = Image.new("RGB", (320, 240), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    shadow = Image.new("L", image.size, 0)
    ImageDraw.Draw(shadow).ellipse((150, 80, 290, 220), fill=255)
    shade = np.asarray(shadow.filter(ImageFilter.GaussianBlur(8)), np.float32)[..., None] / 255
    image = Image.fromarray((np.asarray(image, np.float32) * (1 - 0.25 * shade)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((140, 70, 270, 200), fill=(30, 120, 200))
    draw.rectangle((0, 60, 60, 140), fill=(200, 40, 40))  # touches the left edge

    alpha = np.asarray(BackgroundRemover("subject", threshold=0.5).remove(image).getchannel("A"))

    assert alpha[135, 205] == 255 and alpha[100, 5] == 255  # both objects
    assert alpha[215, 280] == 0  # the cast shadow, below-right of the disc
    assert alpha[10, 310] == 0 and alpha[230, 10] == 0
