"""Graphs: parse, validate (types, bounds, links, cycles) and price before anything runs.

Wire format of a graph::

    {"nodes": {
        "gen": {"type": "text_to_image", "params": {"model": "pixelmill-tiny", "prompt": "..."}},
        "up":  {"type": "upscale", "params": {"factor": 2}, "inputs": {"image": ["gen", "images"]}}
    }}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pixelmill.errors import InvalidInput
from pixelmill.nodes.services import NodeServices
from pixelmill.nodes.base import NodeParams, NodeRegistry, NodeType


@dataclass
class PreparedNode:
    node_id: str
    type: NodeType
    params: NodeParams
    links: dict[str, tuple[str, str]]  # input name -> (node_id, output)
    cost: float
    output_sizes: list[tuple[int, int]]

    @property
    def depends_on(self) -> set[str]:
        return {src for src, _ in self.links.values()}


@dataclass
class PreparedGraph:
    nodes: dict[str, PreparedNode]  # in topological order
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return round(sum(n.cost for n in self.nodes.values()), 4)

    def breakdown(self) -> list[dict[str, Any]]:
        return [{"nodeId": n.node_id, "type": n.type.name, "credits": n.cost} for n in self.nodes.values()]

    def output_megapixels(self) -> float:
        sinks = [n for n in self.nodes.values() if not any(n.node_id in m.depends_on for m in self.nodes.values())]
        return round(sum(w * h for n in sinks for w, h in n.output_sizes) / 1_000_000, 4)


class GraphProblems(InvalidInput):
    code = "invalid_graph"
    message = "The graph is invalid"


def prepare(graph: dict[str, Any], registry: NodeRegistry, services: NodeServices) -> PreparedGraph:
    """Validate every node and link; raise GraphProblems listing every problem per node."""
    problems: list[dict[str, Any]] = []

    def problem(node: str | None, msg: str, loc: list | None = None) -> None:
        problems.append({"node": node, "loc": loc or [], "msg": msg})

    nodes_raw = graph.get("nodes") if isinstance(graph, dict) else None
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        raise GraphProblems(problems=[{"node": None, "loc": ["nodes"], "msg": "a graph needs a non-empty 'nodes' object"}])
    if len(nodes_raw) > 64:
        raise GraphProblems(problems=[{"node": None, "loc": ["nodes"], "msg": "at most 64 nodes per graph"}])

    parsed: dict[str, tuple[NodeType, NodeParams | None, dict[str, tuple[str, str]]]] = {}
    for node_id, spec in nodes_raw.items():
        if not isinstance(spec, dict):
            problem(node_id, "a node must be an object with 'type', 'params' and 'inputs'")
            continue
        ntype = registry.get(str(spec.get("type")))
        if ntype is None:
            problem(node_id, f"unknown node type {spec.get('type')!r}; known: {', '.join(registry.names())}", ["type"])
            continue
        params = None
        try:
            params = ntype.Params.model_validate(spec.get("params") or {})
        except ValidationError as e:
            for err in e.errors():
                problem(node_id, err["msg"], ["params", *err["loc"]])
        if params is not None:
            for found in ntype.check(params, services):
                field, msg = found if isinstance(found, tuple) else (None, found)
                problem(node_id, msg, ["params", field] if field else ["params"])
        links: dict[str, tuple[str, str]] = {}
        raw_links = spec.get("inputs") or {}
        if not isinstance(raw_links, dict):
            problem(node_id, "'inputs' must be an object of {input_name: [node_id, output_name]}", ["inputs"])
            raw_links = {}
        for name, link in raw_links.items():
            if name not in ntype.inputs:
                problem(node_id, f"{ntype.name} has no input {name!r}; inputs: {', '.join(ntype.inputs) or 'none'}", ["inputs", name])
                continue
            if not (isinstance(link, (list, tuple)) and len(link) == 2 and all(isinstance(x, str) for x in link)):
                problem(node_id, "a link is [node_id, output_name]", ["inputs", name])
                continue
            links[name] = (link[0], link[1])
        for name, (_typ, required) in ntype.inputs.items():
            if required and name not in links:
                problem(node_id, f"input {name!r} is required", ["inputs", name])
        if params is not None:
            for name, msg in ntype.check_inputs(params, services, set(links)).items():
                problem(node_id, msg, ["inputs", name])
        parsed[node_id] = (ntype, params, links)

    # links: target exists, output exists, types match
    for node_id, (ntype, _params, links) in parsed.items():
        for name, (src, out) in links.items():
            if src not in nodes_raw:
                problem(node_id, f"links to unknown node {src!r}", ["inputs", name])
                continue
            if src not in parsed:
                continue
            src_type = parsed[src][0]
            if out not in src_type.outputs:
                problem(node_id, f"node {src!r} ({src_type.name}) has no output {out!r}", ["inputs", name])
            elif src_type.outputs[out] != ntype.inputs[name][0]:
                problem(node_id, f"type mismatch: {src}.{out} is {src_type.outputs[out]}, {name} needs {ntype.inputs[name][0]}", ["inputs", name])

    order = _topological_order({n: {s for s, _ in links.values()} for n, (_, _, links) in parsed.items()})
    if order is None:
        problem(None, "the graph has a cycle", ["nodes"])
    if problems:
        raise GraphProblems(problems=problems)

    prepared: dict[str, PreparedNode] = {}
    for node_id in order:
        ntype, params, links = parsed[node_id]
        input_sizes = {name: prepared[src].output_sizes for name, (src, _out) in links.items()}
        prepared[node_id] = PreparedNode(
            node_id=node_id,
            type=ntype,
            params=params,
            links=links,
            cost=round(ntype.cost(params, services, input_sizes), 4),
            output_sizes=ntype.output_sizes(params, input_sizes),
        )
    return PreparedGraph(nodes=prepared, raw=graph)


def _topological_order(deps: dict[str, set[str]]) -> list[str] | None:
    order: list[str] = []
    remaining = {n: set(d) & set(deps) for n, d in deps.items()}
    while remaining:
        ready = sorted(n for n, d in remaining.items() if not d)
        if not ready:
            return None
        for n in ready:
            order.append(n)
            del remaining[n]
        for d in remaining.values():
            d.difference_update(ready)
    return order


def cache_key(node_type: str, params: dict[str, Any], seed: int | None, upstream_keys: list[str]) -> str:
    """Key of a deterministic node's output: type + params + seed + its ancestors' keys."""
    blob = json.dumps([node_type, params, seed, sorted(upstream_keys)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
