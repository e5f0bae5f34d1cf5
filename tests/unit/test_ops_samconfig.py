"""samconfig.toml: one deployable stack per environment, matching the template."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ("dev", "staging", "prod")


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that accepts CloudFormation short tags (values are not needed)."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


@pytest.fixture(scope="module")
def samconfig() -> dict[str, Any]:
    return tomllib.loads((REPO / "samconfig.toml").read_text())


@pytest.fixture(scope="module")
def template_parameters() -> dict[str, Any]:
    template = yaml.load((REPO / "template.yaml").read_text(), Loader=_CfnLoader)
    parameters: dict[str, Any] = template["Parameters"]
    return parameters


def _overrides(deploy: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in deploy["parameter_overrides"])


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_deploys_own_stack(
    samconfig: dict[str, Any], environment: str
) -> None:
    deploy = samconfig[environment]["deploy"]["parameters"]
    overrides = _overrides(deploy)

    assert deploy["stack_name"] == f"agent-resilience-{environment}"
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_s3"] is True
    assert overrides["Environment"] == environment
    assert overrides["QueuePrefix"] == f"agent-resilience-{environment}-"
    for secret in ("DatabaseUrlSecret", "RedisSecret", "ProviderKeysSecret"):
        assert overrides[secret].startswith(f"agent-resilience/{environment}/")
    assert overrides["AlertingSecret"] == f"agent-resilience/{environment}/alerting"


@pytest.mark.parametrize("environment", [*ENVIRONMENTS, "default"])
def test_overrides_name_template_parameters(
    samconfig: dict[str, Any], template_parameters: dict[str, Any], environment: str
) -> None:
    overrides = _overrides(samconfig[environment]["deploy"]["parameters"])

    unknown = set(overrides) - set(template_parameters)
    assert not unknown, f"{environment}: not parameters of template.yaml: {unknown}"
    allowed = template_parameters["Environment"]["AllowedValues"]
    assert overrides["Environment"] in allowed


def test_only_prod_waits_for_confirmation(samconfig: dict[str, Any]) -> None:
    confirm = {
        environment: samconfig[environment]["deploy"]["parameters"]["confirm_changeset"]
        for environment in ENVIRONMENTS
    }

    assert confirm == {"dev": False, "staging": False, "prod": True}


def test_default_environment_is_dev(samconfig: dict[str, Any]) -> None:
    assert samconfig["default"]["deploy"] == samconfig["dev"]["deploy"]
    assert samconfig["default"]["build"] == samconfig["dev"]["build"]


@pytest.mark.parametrize("environment", [*ENVIRONMENTS, "default"])
def test_build_runs_in_source(samconfig: dict[str, Any], environment: str) -> None:
    build = samconfig[environment]["build"]["parameters"]

    assert build["build_in_source"] is True
