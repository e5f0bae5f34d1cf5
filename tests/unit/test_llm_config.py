"""Tiers, settings, prices and request validation of the LLM chain."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest

from resilience.errors import ConfigError, ValidationError
from resilience.llm import ChainConfig, CompletionRequest, Usage
from resilience.llm.cache import cache_key
from resilience.llm.config import TEMPLATE_STEP, TierStep, parse_tiers
from resilience.llm.pricing import PriceTable, default_price_table
from resilience.llm.providers import ClientSettings


def test_default_tiers_end_with_template() -> None:
    config = ChainConfig()

    names = [step.name for step in config.steps("default")]

    assert names == [
        "openai:gpt-4o-mini",
        "anthropic:claude-haiku-4-5",
        "local:template",
    ]


def test_parse_tiers_appends_template() -> None:
    raw = json.dumps(
        {
            "cheap": [
                {
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "timeoutS": 3,
                    "largerWindow": {"provider": "openai", "model": "gpt-4.1-mini"},
                }
            ]
        }
    )

    tiers = parse_tiers(raw)

    assert tiers["cheap"][-1] == TEMPLATE_STEP
    assert tiers["cheap"][0].timeout_s == 3.0
    assert tiers["cheap"][0].larger_window == TierStep("openai", "gpt-4.1-mini")
    assert "template" in tiers


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"default": []}', "non-empty list"),
        (
            '{"default": [{"provider": "mistral", "model": "x"}]}',
            "provider must be one of",
        ),
        (
            '{"default": [{"provider": "openai", "model": ""}]}',
            "model of a openai step",
        ),
        ('{"default": ["gpt-4o"]}', "must be an object"),
    ],
)
def test_parse_tiers_rejects(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_tiers(raw)

    assert caught.value.setting == "LLM_TIERS"


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ATTEMPT_TIMEOUT_S", "2.5")
    monkeypatch.setenv("DAILY_BUDGET_USD", "12.50")
    monkeypatch.setenv("DAILY_HARD_BUDGET_USD", "20")
    monkeypatch.setenv("LLM_OVER_BUDGET", "template")
    monkeypatch.setenv("LLM_HEDGE_DELAY_S", "0.4")

    config = ChainConfig.from_env(max_concurrency=2)

    assert config.attempt_timeout_s == 2.5
    assert config.daily_budget_usd == Decimal("12.50")
    assert config.hard_budget_usd == Decimal("20")
    assert config.over_budget == "template"
    assert config.hedge_delay_s == 0.4
    assert config.max_concurrency == 2
    assert config.cache_ttl_s == 3600


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DAILY_BUDGET_USD", "lots", "amount in USD"),
        ("DAILY_HARD_BUDGET_USD", "-1", "0 or more"),
        ("LLM_ATTEMPT_TIMEOUT_S", "soon", "must be a number"),
        ("LLM_ATTEMPT_TIMEOUT_S", "0", "must be positive"),
        ("LLM_ATTEMPT_SHARE", "0", "above 0 and at most 1"),
        ("LLM_ATTEMPT_SHARE", "1.5", "above 0 and at most 1"),
        ("LLM_ATTEMPT_SHARE", "half", "must be a number"),
        ("LLM_OVER_BUDGET", "panic", "'refuse', 'template' or a tier name"),
    ],
)
def test_config_rejects_bad_settings(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=message) as caught:
        ChainConfig.from_env()

    assert caught.value.setting == name


def test_price_table_costs_every_partition() -> None:
    price = default_price_table().price(
        "anthropic", "claude-haiku-4-5", date(2026, 12, 4)
    )
    assert price is not None
    usage = Usage(
        input_tokens=1000,
        output_tokens=500,
        cached_input_tokens=2000,
        cache_write_tokens=100,
    )

    cost = price.cost(usage)

    expected = (
        Decimal("0.000001") * 1000
        + Decimal("0.000005") * 500
        + Decimal("0.0000001") * 2000
        + Decimal("0.00000125") * 100
    )
    assert cost == expected
    assert price.version == "2026-12-01/2025-10-01"


def test_price_periods_by_effective_date() -> None:
    table = PriceTable.from_json(
        {
            "version": "v2",
            "models": {
                "openai:m": [
                    {
                        "effectiveFrom": "2025-01-01",
                        "effectiveTo": "2026-01-01",
                        "input": "1",
                        "output": "2",
                    },
                    {
                        "effectiveFrom": "2026-01-01",
                        "effectiveTo": None,
                        "input": "3",
                        "output": "4",
                    },
                ]
            },
        }
    )

    old = table.price("openai", "m", date(2025, 6, 1))
    new = table.price("openai", "m", date(2026, 1, 1))

    assert old is not None
    assert new is not None
    assert old.input == 1
    assert new.input == 3
    assert new.version == "v2/2026-01-01"
    assert table.price("openai", "m", date(2024, 1, 1)) is None
    assert table.price("openai", "unknown") is None


def test_price_table_rejects_bad_period() -> None:
    with pytest.raises(ConfigError, match="invalid price period"):
        PriceTable.from_json(
            {"version": "v", "models": {"openai:m": [{"effectiveFrom": "x"}]}}
        )


def test_packaged_prices_match_litellm_numbers() -> None:
    table = default_price_table()
    today = date(2026, 12, 4)

    mini = table.price("openai", "gpt-4o-mini", today)
    haiku = table.price("anthropic", "claude-haiku-4-5", today)

    assert mini is not None
    assert haiku is not None
    assert (mini.input, mini.output) == (Decimal("1.5e-7"), Decimal("6e-7"))
    assert (haiku.input, haiku.output) == (Decimal("1e-6"), Decimal("5e-6"))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "maxTokens"),
        ({"prompt": "x", "max_tokens": True}, "maxTokens"),
        ({"prompt": "x", "deadline_s": -1}, "deadlineS"),
        ({"prompt": "x", "temperature": 3.0}, "temperature"),
        ({"prompt": "x", "org_id": "bad org!"}, "orgId"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"prompt": "x" * 400_001}, "prompt"),
    ],
)
def test_request_validation_names_field(fields: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CompletionRequest(**fields).validated()

    assert caught.value.field == field


def test_cache_key_covers_tier_models_and_params() -> None:
    steps = ChainConfig().steps("default")
    base = CompletionRequest(prompt="same").validated()

    other_tokens = CompletionRequest(prompt="same", max_tokens=10).validated()
    other_prompt = CompletionRequest(prompt="different").validated()

    assert cache_key(base, steps) == cache_key(
        CompletionRequest(prompt="same").validated(), steps
    )
    assert cache_key(base, steps) != cache_key(other_tokens, steps)
    assert cache_key(base, steps) != cache_key(other_prompt, steps)
    assert cache_key(base, steps) != cache_key(base, steps[1:])


def test_missing_key_points_at_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "LLM_MOCK",
        "PROVIDER_KEYS_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLM_MOCK_URL", "http://127.0.0.1:9999")

    settings = ClientSettings.from_env("openai")

    assert settings.mock is True
    assert settings.base_url == "http://127.0.0.1:9999/v1"


def test_mock_flag_wins_over_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-real")
    monkeypatch.setenv("LLM_MOCK", "1")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("LLM_MOCK_URL", raising=False)

    settings = ClientSettings.from_env("anthropic")

    assert settings.base_url == "http://127.0.0.1:8788"
    assert settings.api_key == "local-mock-key"


def test_attempt_timeout_defaults() -> None:
    config = ChainConfig.from_env()

    assert config.attempt_timeout_s == 6.0
    assert config.attempt_share == 0.5


@pytest.mark.parametrize(
    ("step_timeout", "remaining", "final", "expected"),
    [
        # Deadline 5 s less the 1 s margin: the primary keeps 2 s in reserve.
        (None, 4.0, False, 2.0),
        # The whole 29 s: the attempt timeout is the smaller limit.
        (None, 29.0, False, 6.0),
        # The last provider may use all the time left, up to its timeout.
        (None, 4.0, True, 4.0),
        (None, 29.0, True, 6.0),
        # A step's own timeoutS replaces the default, the share still applies.
        (20.0, 29.0, False, 14.5),
        (20.0, 29.0, True, 20.0),
        (1.0, 29.0, False, 1.0),
    ],
)
def test_attempt_timeout_rule(
    step_timeout: float | None, remaining: float, final: bool, expected: float
) -> None:
    config = ChainConfig(attempt_timeout_s=6.0, attempt_share=0.5)
    step = TierStep("openai", "gpt-4o-mini", timeout_s=step_timeout)

    timeout = config.attempt_timeout(step, remaining, final=final)

    assert timeout == pytest.approx(expected)
