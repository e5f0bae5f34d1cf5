"""Read a CloudFormation / SAM template and resolve its intrinsic functions.

The YAML loader understands the short tags (``!Ref``, ``!GetAtt``, ``!Sub``,
``!If``, ``!Equals`` and the rest) and turns each into the long form
(``{"Ref": ...}``, ``{"Fn::GetAtt": [...]}``), so the resolver handles one
shape. The resolver evaluates the functions the local stack needs against
local values: parameters (template defaults plus overrides), pseudo
parameters, conditions and the ids and attributes of the resources that the
local stack created.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "NO_VALUE",
    "IntrinsicResolver",
    "TemplateError",
    "load_template",
]

# Tags whose long form is "Fn::<Tag>". Ref and Condition keep their own keys.
_FN_TAGS = (
    "And",
    "Base64",
    "Cidr",
    "Equals",
    "FindInMap",
    "GetAtt",
    "GetAZs",
    "If",
    "ImportValue",
    "Join",
    "Not",
    "Or",
    "Select",
    "Split",
    "Sub",
    "ToJsonString",
    "Length",
)

_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


class TemplateError(ValueError):
    """The template uses something the local stack cannot resolve."""


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE: Any = _NoValue()
"""Marker for ``!Ref AWS::NoValue``: the property is removed."""


class _TemplateLoader(yaml.SafeLoader):
    """A SafeLoader that also reads the CloudFormation short tags."""


def _construct_node(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise TemplateError(f"unsupported YAML node {node!r}")


def _make_constructor(tag: str) -> Callable[[yaml.SafeLoader, yaml.Node], Any]:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        value = _construct_node(loader, node)
        if tag == "Ref":
            return {"Ref": value}
        if tag == "Condition":
            return {"Condition": value}
        # "!GetAtt Queue.Arn" is the short form of ["Queue", "Arn"].
        if tag == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {f"Fn::{tag}": value}

    return construct


for _tag in ("Ref", "Condition", *_FN_TAGS):
    _TemplateLoader.add_constructor(f"!{_tag}", _make_constructor(_tag))


def load_template(path: str | Path) -> dict[str, Any]:
    """Load a template file; short tags become their long forms."""
    text = Path(path).read_text(encoding="utf-8")
    template = yaml.load(text, Loader=_TemplateLoader)
    if not isinstance(template, dict) or "Resources" not in template:
        raise TemplateError(f"{path} is not a CloudFormation template: no Resources")
    return template


class IntrinsicResolver:
    """Evaluate intrinsic functions of one template against local values.

    ``refs`` maps a logical id to what ``!Ref`` returns for it; ``attributes``
    maps ``(logical id, attribute)`` to what ``!GetAtt`` returns. A resource
    the local stack does not create resolves to a placeholder ARN, so that
    settings which only name it (a layer, an API id) still get a value.
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        *,
        parameters: Mapping[str, str] | None = None,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        stack_name: str = "agent-resilience",
    ) -> None:
        self.template = template
        self.region = region
        self.account_id = account_id
        self.stack_name = stack_name
        self.refs: dict[str, Any] = {}
        self.attributes: dict[tuple[str, str], Any] = {}
        self.parameters = self._parameter_values(parameters or {})
        self._conditions: dict[str, bool] = {}

    def _parameter_values(self, overrides: Mapping[str, str]) -> dict[str, Any]:
        declared = self.template.get("Parameters") or {}
        unknown = sorted(set(overrides) - set(declared))
        if unknown:
            raise TemplateError(
                f"unknown template parameters {unknown}: valid names are "
                f"{sorted(declared)}"
            )
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            value = overrides.get(name, (spec or {}).get("Default", ""))
            kind = str((spec or {}).get("Type", "String"))
            # List parameters resolve to lists, as in CloudFormation.
            if kind == "CommaDelimitedList" or kind.startswith("List<"):
                value = value if isinstance(value, list) else str(value).split(",")
            values[name] = value
        return values

    def pseudo_parameters(self) -> dict[str, str]:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::StackName": self.stack_name,
            "AWS::StackId": (
                f"arn:aws:cloudformation:{self.region}:{self.account_id}:"
                f"stack/{self.stack_name}/local"
            ),
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NotificationARNs": "",
        }

    def placeholder_arn(self, logical_id: str) -> str:
        return f"arn:aws:local:{self.region}:{self.account_id}:{logical_id}"

    def condition(self, name: str) -> bool:
        """Evaluate a named condition of the template (cached)."""
        if name not in self._conditions:
            conditions = self.template.get("Conditions") or {}
            if name not in conditions:
                raise TemplateError(f"condition {name!r} is not defined in Conditions")
            self._conditions[name] = bool(self.resolve(conditions[name]))
        return self._conditions[name]

    def resource_enabled(self, logical_id: str) -> bool:
        """Return False for a resource whose Condition is false."""
        resource = self.template["Resources"][logical_id]
        condition = resource.get("Condition")
        return condition is None or self.condition(condition)

    def resolve(self, value: Any) -> Any:
        """Return ``value`` with every intrinsic function evaluated."""
        if isinstance(value, list):
            items = [self.resolve(item) for item in value]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self._ref(argument)
            if key == "Condition" and isinstance(argument, str):
                return self.condition(argument)
            if key.startswith("Fn::"):
                return self._function(key[4:], argument)
        resolved = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        pseudo = self.pseudo_parameters()
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        if name in (self.template.get("Resources") or {}):
            return self.placeholder_arn(name)
        raise TemplateError(f"!Ref {name}: no parameter or resource of that name")

    def _get_att(self, logical_id: str, attribute: str) -> Any:
        if (logical_id, attribute) in self.attributes:
            return self.attributes[(logical_id, attribute)]
        if logical_id in (self.template.get("Resources") or {}):
            return f"{self.placeholder_arn(logical_id)}/{attribute}"
        raise TemplateError(f"!GetAtt {logical_id}.{attribute}: no such resource")

    def _function(self, name: str, argument: Any) -> Any:
        handlers: dict[str, Callable[[Any], Any]] = {
            "GetAtt": lambda arg: self._get_att(*self.resolve(arg)),
            "Sub": self._sub,
            "If": self._if,
            "Equals": lambda arg: _equals(*self.resolve(arg)),
            "Not": lambda arg: not self.resolve(arg)[0],
            "And": lambda arg: all(self.resolve(arg)),
            "Or": lambda arg: any(self.resolve(arg)),
            "Join": self._join,
            "Select": lambda arg: self.resolve(arg[1])[int(self.resolve(arg[0]))],
            "Split": lambda arg: str(self.resolve(arg[1])).split(self.resolve(arg[0])),
            "GetAZs": lambda _arg: [f"{self.region}{zone}" for zone in "abc"],
            "ToJsonString": lambda arg: _json(self.resolve(arg)),
            "Length": lambda arg: len(self.resolve(arg)),
        }
        if name not in handlers:
            raise TemplateError(f"Fn::{name} is not supported by the local stack")
        return handlers[name](argument)

    def _if(self, argument: list[Any]) -> Any:
        condition, when_true, when_false = argument
        return self.resolve(when_true if self.condition(condition) else when_false)

    def _join(self, argument: list[Any]) -> str:
        delimiter, items = argument
        return str(delimiter).join(str(item) for item in self.resolve(items))

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument[0], self.resolve(argument[1])
        else:
            text, variables = argument, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return str(self._get_att(logical_id, attribute))
            return str(self._ref(name))

        # "${!Literal}" is CloudFormation's escape for a literal "${Literal}".
        return _SUB_VARIABLE.sub(replace, text).replace("${!", "${")


def _equals(left: Any, right: Any) -> bool:
    return str(left) == str(right)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))
