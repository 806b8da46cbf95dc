"""Operator commands on accounts go through the same AccountDirectory as the admin API."""

from __future__ import annotations

import json

from pixelmill import cli


def test_set_plan_grant_and_usage_from_the_command_line(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path / "data")]
    assert cli.main([*data, "init", "--account", "owner", "--json"]) == 0
    capsys.readouterr()
    assert cli.main([*data, "accounts", "set-plan", "owner", "pro"]) == 0
    assert "now on plan pro" in capsys.readouterr().out
    assert cli.main([*data, "credits", "grant", "owner", "5", "--entry-key", "bonus-1"]) == 0
    assert "granted 5.0 credits" in capsys.readouterr().out
    assert cli.main([*data, "credits", "grant", "owner", "5", "--entry-key", "bonus-1"]) == 0
    assert "already granted" in capsys.readouterr().out  # exactly once per entry key
    assert cli.main([*data, "usage", "owner", "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert usage["plan"] == "pro" and [e["note"] for e in usage["ledger"]].count("granted from the command line") == 1
    assert cli.main([*data, "usage", "nobody"]) == 1
