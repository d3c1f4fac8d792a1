"""What contrib/ ships for operators stays true: the Prometheus alerting rules pass
``promtool check rules`` and their unit tests (``promtool test rules``), and the Grafana
dashboard and the rules use only metrics the relay exports and docs/operations.md documents."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from air_relay.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib/prometheus/rules.yaml"
RULES_TEST = ROOT / "contrib/prometheus/rules_test.yaml"
DASHBOARD = ROOT / "contrib/grafana/air-relay.json"
METRIC = re.compile(r"\bair_relay_[a-z_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def _promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        pytest.skip("promtool is not installed (apt-get install -y prometheus; .ci/run does)")
    return found


@pytest.mark.parametrize("command", [["check", "rules", RULES], ["test", "rules", RULES_TEST]])
def test_promtool_accepts_the_rules(command: list[Any]) -> None:
    result = subprocess.run(
        [_promtool(), *map(str, command)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _exported() -> set[str]:
    """Every series name /metrics can show (counters with _total, histograms' series)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def _documented_name(series: str) -> str:
    return HISTOGRAM_SERIES.sub("", series) if series.endswith("_bucket") else series


def _expressions() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    rules = yaml.safe_load(RULES.read_text())
    return {
        "dashboard": [t["expr"] for p in panels for t in p["targets"]],
        "rules": [r["expr"] for g in rules["groups"] for r in g["rules"]],
    }


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_used_is_exported_and_documented(source: str) -> None:
    operations = (ROOT / "docs/operations.md").read_text()
    exported = _exported()
    used = {m for expr in _expressions()[source] for m in METRIC.findall(expr)}
    assert used, f"the {source} uses no air_relay metric"
    for name in sorted(used):
        assert name in exported, f"the {source} uses {name}, which /metrics does not export"
        documented = _documented_name(name)
        assert f"`{documented}" in operations, f"{documented} is not in docs/operations.md"


def test_the_dashboard_is_plain_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "air-relay"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "two panels share an id"
    # Sink panels name sinks by id and type only: the exported labels.
    for expr in _expressions()["dashboard"]:
        assert "name" not in re.findall(r"by \(([^)]*)\)", expr)
