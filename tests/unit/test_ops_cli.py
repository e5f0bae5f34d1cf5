"""The ``python -m resilience`` dispatcher: pattern selection and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resilience.__main__ import PATTERNS, main

REPO = Path(__file__).resolve().parents[2]


def test_unknown_pattern_exits_2_listing_valid_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["breakers", "list"])

    error = capsys.readouterr().err
    assert code == 2
    assert "unknown pattern 'breakers'" in error
    assert "expected one of batch, breaker, db, escalation, llm, queues" in error


def test_no_arguments_exits_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([])

    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("usage: python -m resilience <pattern> <command>")


def test_help_lists_every_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--help"])

    output = capsys.readouterr().out
    assert code == 0
    for pattern in [*PATTERNS, "db"]:
        assert f"\n  {pattern} " in output


def test_db_without_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["db"])

    assert code == 2
    assert "required: command" in capsys.readouterr().err


def test_db_migrate_without_url_names_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL_SECRET", raising=False)

    code = main(["db", "migrate"])

    assert code == 2
    assert "set DATABASE_URL or DATABASE_URL_SECRET" in capsys.readouterr().err


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_pattern_help_reaches_its_cli(
    pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([pattern, "--help"])

    output = capsys.readouterr().out
    assert code == 0
    assert "usage:" in output


def test_module_entry_point_exit_status() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "resilience", "nosuchpattern"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2
    assert "unknown pattern 'nosuchpattern'" in completed.stderr
