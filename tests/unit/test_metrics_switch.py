"""emit_metric follows the Powertools switches that turn metrics off."""

from __future__ import annotations

import json

import pytest

from resilience import observability
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
        ({"POWERTOOLS_METRICS_DISABLED": ""}, True),
        ({"POWERTOOLS_DEV": "maybe", "POWERTOOLS_METRICS_DISABLED": "true"}, False),
        ({"POWERTOOLS_DEV": "true", "POWERTOOLS_METRICS_DISABLED": "maybe"}, False),
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


def test_invalid_switch_logged_once_by_name(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(observability, "_invalid_switches_logged", set())
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.setenv("POWERTOOLS_DEV", "sometimes")

    emit_metric("BatchFailureRate", 1.0, MetricUnit.Percent)
    emit_metric("BatchFailureRate", 2.0, MetricUnit.Percent)

    warnings = [r for r in caplog.records if r.getMessage() == "metric.invalid_switch"]
    assert len(warnings) == 1
    assert warnings[0].setting == "POWERTOOLS_DEV"  # type: ignore[attr-defined]
    assert warnings[0].value == "sometimes"  # type: ignore[attr-defined]
    assert len(capsys.readouterr().out.splitlines()) == 2
