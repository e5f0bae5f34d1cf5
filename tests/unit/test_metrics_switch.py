"""emit_metric follows the Powertools switches that turn metrics off."""

from __future__ import annotations

import json

import pytest

from resilience.observability import MetricUnit, emit_metric


@pytest.mark.parametrize(
    ("env", "printed"),
    [
        ({}, True),
        ({"POWERTOOLS_METRICS_DISABLED": "true"}, False),
        ({"POWERTOOLS_METRICS_DISABLED": "false"}, True),
        ({"POWERTOOLS_DEV": "true"}, False),
        ({"POWERTOOLS_DEV": "true", "POWERTOOLS_METRICS_DISABLED": "false"}, True),
        ({"POWERTOOLS_METRICS_DISABLED": "maybe"}, True),
    ],
)
def test_metric_lines_follow_powertools_switches(
    env: dict[str, str],
    printed: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    emit_metric("BatchFailureRate", 12.5, MetricUnit.Percent)

    out = capsys.readouterr().out
    if printed:
        line = json.loads(out)
        assert line["BatchFailureRate"] == 12.5
    else:
        assert out == ""
