"""Recipes make valid graphs with one set of node ids and one set of strength defaults."""

from __future__ import annotations

import pytest

from pixelmill import recipes
from pixelmill.config import Settings
from pixelmill.engine.graph import GraphProblems, prepare
from pixelmill.models.catalog import ModelCatalog
from pixelmill.nodes.registry import default_registry
from pixelmill.nodes.services import NodeServices
from tests.conftest import FAKE_CATALOG

URL = "https://example.com/cat.png"
BASE = dict(model="fake", prompt="a cat", width=256, height=256, seed=3)


@pytest.fixture(scope="module")
def services() -> NodeServices:
    catalog = ModelCatalog.from_toml(FAKE_CATALOG.replace("default_steps = 4", "default_steps = 4\nsupports_image_input = true"))
    return NodeServices.build(Settings(), catalog)


def generation(graph: dict) -> dict:
    return graph["nodes"]["generate"]


def test_generate_leaves_unset_fields_to_the_node(services):
    graph = recipes.Generate(**BASE).graph()
    assert graph == {"nodes": {"generate": {"type": "text_to_image", "params": BASE}}}
    prepared = prepare(graph, default_registry(), services)
    assert prepared.nodes["generate"].params.num_images == 1


@pytest.mark.parametrize(
    "recipe, strength",
    [
        (recipes.ImageToImage(**BASE, image=recipes.ImageRef(URL)), recipes.IMAGE_TO_IMAGE_STRENGTH),
        (recipes.ImageToImage(**BASE, image=recipes.ImageRef(URL), strength=0.2), 0.2),
        (recipes.Variation(model="fake", width=256, height=256, image=recipes.ImageRef(URL)), recipes.IMAGE_TO_IMAGE_STRENGTH),
        (recipes.Inpaint(**BASE, image=recipes.ImageRef(URL)), recipes.INPAINT_STRENGTH),
        (recipes.Inpaint(**BASE, image=recipes.ImageRef(URL), strength=recipes.FULL_REPAINT), 1.0),
        (recipes.Outpaint(**BASE, image=recipes.ImageRef(URL), left=64, right=64), recipes.FULL_REPAINT),
    ],
)
def test_image_recipes_are_valid_graphs_with_one_strength_default(recipe, strength, services):
    graph = recipe.graph()
    assert generation(graph)["params"]["strength"] == strength
    assert list(graph["nodes"])[-1] == "generate" and graph["nodes"]["image"]["params"] == {"url": URL}
    prepared = prepare(graph, default_registry(), services)
    assert prepared.cost > 0


def test_inpaint_masks_come_from_a_mask_its_alpha_or_the_image_alpha():
    image, mask = recipes.ImageRef(URL), recipes.ImageRef("https://example.com/mask.png")
    own = recipes.Inpaint(**BASE, image=image).graph()["nodes"]["mask"]
    assert own == {"type": "load_image", "params": {"url": URL, "mask_from_alpha": True}}
    white = recipes.Inpaint(**BASE, image=image, mask=mask).graph()["nodes"]["mask"]
    assert white == {"type": "load_image", "params": {"url": mask.source}}
    alpha = recipes.Inpaint(**BASE, image=image, mask=mask, mask_from_alpha=True).graph()["nodes"]["mask"]
    assert alpha["params"] == {"url": mask.source, "mask_from_alpha": True}
    assert generation(recipes.Inpaint(**BASE, image=image).graph())["inputs"] == {"image": ["image", "images"], "mask": ["mask", "images"]}


def test_base64_images_travel_as_data():
    assert recipes.ImageRef("QUJD").node() == {"type": "load_image", "params": {"data": "QUJD"}}


def test_outpaint_pads_image_and_mask_and_generates_the_margins():
    nodes = recipes.Outpaint(**BASE, image=recipes.ImageRef(URL), top=32).graph()["nodes"]
    assert nodes["padded"]["params"] == {"top": 32, "bottom": 0, "left": 0, "right": 0}
    assert nodes["margins"]["params"]["mask"] is True
    assert nodes["generate"]["inputs"] == {"image": ["padded", "images"], "mask": ["margins", "images"]}


def test_chain_feeds_each_step_the_previous_images(services):
    chain = recipes.Chain(
        recipes.Generate(**BASE), (recipes.Step("upscale", {"factor": 2}), recipes.Step("convert", {"output_format": "jpeg"}, name="jpeg"))
    )
    nodes = chain.graph()["nodes"]
    assert list(nodes) == ["generate", "upscale_1", "jpeg"]
    assert nodes["jpeg"]["inputs"] == {"image": ["upscale_1", "images"]}
    prepare(chain.graph(), default_registry(), services)
    with pytest.raises(ValueError):
        recipes.Chain(recipes.Generate(**BASE), (recipes.Step("resize", name="generate"),)).graph()


def test_reference_follow_becomes_noise_strength():
    assert recipes.strength_from_follow(None) == 1 - recipes.REFERENCE_FOLLOW
    assert recipes.strength_from_follow(0.8) == pytest.approx(0.2)


def test_problems_name_the_parameter(services):
    with pytest.raises(GraphProblems) as too_many:
        prepare(recipes.Generate(**BASE, steps=99).graph(), default_registry(), services)
    found = recipes.first_problem(too_many.value)
    assert found.path == ("steps",) and found.about_params and found.message.startswith("steps must be at most")
    # a model-level check without a location names its field first
    bare = GraphProblems(problems=[{"node": "generate", "loc": [], "msg": "seed is not allowed"}, {"node": "image", "loc": ["inputs", "image"], "msg": "x"}])
    first, second = recipes.problem_params(bare, {"steps", "seed"})
    assert first.path == ("seed",) and not first.about_params
    assert second.path == ("inputs", "image") and not second.about_params
    assert recipes.first_problem(bare).path == ()
    assert recipes.problem_params(GraphProblems("nothing to run")) == [recipes.ProblemParam((), "nothing to run")]
