"""What a node run is routed by and linked to are columns and view fields, never keys inside its params."""

from __future__ import annotations

import sqlalchemy as sa

from pixelmill.engine.service import Submission
from pixelmill.store.tables import node_runs
from tests.engine.test_engine import chain, finished, principal


def test_queue_and_links_are_fields_not_params(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    p = principal(rt)
    eid = rt.executions.submit(Submission(p, chain(), "workflow", "chain")).id
    view = finished(rt, p, eid)
    with rt.db.engine.connect() as conn:
        rows = {r.node_id: r for r in conn.execute(sa.select(node_runs).where(node_runs.c.execution_id == eid))}
    gen = rt.nodes.get("text_to_image")
    assert rows["gen"].queue == gen.queue_name(gen.Params.model_validate(rows["gen"].params))
    assert rows["small"].queue == "default"
    assert not [k for r in rows.values() for k in r.params if k.startswith("__")]
    by_id = {n.node_id: n for n in view.nodes}
    assert by_id["small"].links == {"image": ("gen", "images")} and by_id["gen"].links == {}
    assert not [k for n in view.nodes for k in n.params if k.startswith("__")]
    assert [n.node_id for n in view.sink_nodes()] == ["jpeg"]
