"""Graph validation and pricing: every problem is reported, per node, before anything runs."""

from __future__ import annotations

import pytest

from pixelmill.config import Settings
from pixelmill.engine.graph import GraphProblems, prepare
from pixelmill.models.catalog import ModelCatalog
from pixelmill.nodes.registry import default_registry
from pixelmill.nodes.services import NodeServices
from tests.conftest import FAKE_CATALOG


def Services(catalog: ModelCatalog | None = None) -> NodeServices:
    return NodeServices.build(Settings(), catalog or ModelCatalog.from_toml(FAKE_CATALOG))


def problems(graph):
    with pytest.raises(GraphProblems) as e:
        prepare(graph, default_registry(), Services())
    assert e.value.status == 422
    return e.value.details["problems"]


def gen(**params):
    return {"type": "text_to_image", "params": {"model": "fake", "prompt": "p", "width": 256, "height": 256, **params}}


def test_valid_three_node_graph_is_priced_per_node():
    g = prepare(
        {
            "nodes": {
                "gen": gen(),
                "up": {"type": "upscale", "params": {"factor": 2}, "inputs": {"image": ["gen", "images"]}},
                "cut": {"type": "remove_background", "inputs": {"image": ["up", "images"]}},
            }
        },
        default_registry(),
        Services(),
    )
    assert list(g.nodes) == ["gen", "up", "cut"]
    b = {x["nodeId"]: x["credits"] for x in g.breakdown()}
    assert b["gen"] == pytest.approx(2.0 * 256 * 256 / 1e6, abs=0.011)
    assert b["up"] == pytest.approx(0.5 * 512 * 512 / 1e6, abs=1e-3)
    assert g.nodes["cut"].output_sizes == [(512, 512)]
    assert g.cost == pytest.approx(sum(b.values()))


def test_every_problem_is_listed_with_its_node():
    found = problems(
        {
            "nodes": {
                "gen": gen(width=100000, steps=0),
                "bogus": {"type": "teleport"},
                "up": {"type": "upscale", "params": {"factor": 9}, "inputs": {"image": ["nowhere", "images"]}},
                "cut": {"type": "remove_background", "inputs": {"image": ["gen", "latents"]}},
                "rs": {"type": "resize", "params": {"width": 10}},
            }
        }
    )
    by_node = {}
    for p in found:
        by_node.setdefault(p["node"], []).append(p)
    assert {"gen", "bogus", "up", "cut", "rs"} <= set(by_node)
    assert any(p["loc"] == ["params", "width"] for p in by_node["gen"])
    assert any(p["loc"] == ["params", "steps"] for p in by_node["gen"])
    assert "unknown node type" in by_node["bogus"][0]["msg"]
    assert any("factor" in p["loc"] for p in by_node["up"])
    assert any("unknown node" in p["msg"] for p in by_node["up"])
    assert any("no output 'latents'" in p["msg"] for p in by_node["cut"])
    assert any("required" in p["msg"] for p in by_node["rs"])


def test_cycles_and_unknown_models_are_refused():
    found = problems(
        {
            "nodes": {
                "a": {"type": "resize", "params": {"width": 10}, "inputs": {"image": ["b", "images"]}},
                "b": {"type": "resize", "params": {"width": 10}, "inputs": {"image": ["a", "images"]}},
            }
        }
    )
    assert any("cycle" in p["msg"] for p in found)
    found = problems({"nodes": {"g": gen(model="dall-e-9")}})
    assert "unknown model" in found[0]["msg"]


def test_empty_and_malformed_graphs():
    assert problems({})[0]["loc"] == ["nodes"]
    assert problems({"nodes": {"x": "not an object"}})[0]["node"] == "x"
    assert "link is" in problems({"nodes": {"g": gen(), "r": {"type": "resize", "params": {"width": 5}, "inputs": {"image": "g"}}}})[0]["msg"]


def test_an_image_linked_into_a_text_only_model_is_refused_before_anything_runs():
    found = problems(
        {
            "nodes": {
                "in": {"type": "load_image", "params": {"url": "https://example.com/x.png"}},
                "gen": {**gen(), "inputs": {"image": ["in", "images"]}},
            }
        }
    )
    assert found == [
        {
            "node": "gen",
            "loc": ["inputs", "image"],
            "msg": "model 'fake' does not accept an input image (it is text-to-image only)",
        }
    ]
    # the same link into a model that takes images is fine
    image_model = ModelCatalog.from_toml(FAKE_CATALOG.replace('default_steps = 4', 'default_steps = 4\nsupports_image_input = true'))
    services = Services(image_model)
    graph = {
        "nodes": {
            "in": {"type": "load_image", "params": {"url": "https://example.com/x.png"}},
            "gen": {**gen(), "inputs": {"image": ["in", "images"]}},
        }
    }
    assert list(prepare(graph, default_registry(), services).nodes) == ["in", "gen"]


def test_a_mask_needs_an_input_image():
    found = problems(
        {
            "nodes": {
                "m": {"type": "load_image", "params": {"url": "https://example.com/m.png", "mask_from_alpha": True}},
                "gen": {**gen(), "inputs": {"mask": ["m", "images"]}},
            }
        }
    )
    assert found == [{"node": "gen", "loc": ["inputs", "mask"], "msg": "a mask needs an input image to edit: link one to 'image'"}]
