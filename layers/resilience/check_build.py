"""Import each function of a `sam build` output as Lambda would, with only its layer.

Usage (what `make build` runs after `sam build`)::

    .venv-sam/bin/python layers/resilience/check_build.py .aws-sam/build

Each handler module is imported in a fresh ``python -S`` process whose
``sys.path`` holds only the function's directory, the layer's ``python/``
directory and the packages that the Lambda Python runtime provides (boto3,
botocore and their dependencies, copied from this interpreter's environment).
A package that a handler needs but the layer lacks fails the import here
instead of on the first invocation in AWS.

Exit status: 0 when every handler imports and is callable, 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# The AWS SDK for Python and its dependencies, which the Lambda runtime includes.
RUNTIME_PACKAGES = (
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "dateutil",
    "urllib3",
)
RUNTIME_MODULES = ("six",)

IMPORT_TIMEOUT_S = 60

_PROBE = """
import importlib, json, sys, time
sys.path[:0] = json.loads(sys.argv[1])
module_name, attribute = sys.argv[2], sys.argv[3]
started = time.perf_counter()
module = importlib.import_module(module_name)
handler = getattr(module, attribute)
assert callable(handler), f"{module_name}.{attribute} is not callable"
print(round((time.perf_counter() - started) * 1000))
"""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_build.py BUILD_DIR (the .aws-sam/build directory)")
        return 2
    build_dir = Path(argv[0]).resolve()
    resources = _load_template(build_dir / "template.yaml")["Resources"]

    layer_dirs = [
        (build_dir / logical_id / "python").resolve()
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::LayerVersion"
    ]
    functions = {
        logical_id: resource["Properties"]
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Function"
    }

    failures = 0
    with tempfile.TemporaryDirectory(prefix="lambda-runtime-") as runtime_dir:
        _copy_runtime_packages(Path(runtime_dir))
        for logical_id, properties in sorted(functions.items()):
            code_dir = (build_dir / properties["CodeUri"]).resolve()
            paths = [str(code_dir), *map(str, layer_dirs), runtime_dir]
            failures += _check_handler(
                logical_id, code_dir, paths, properties["Handler"]
            )

    print(f"{len(functions) - failures} of {len(functions)} handlers import")
    return 1 if failures else 0


def _check_handler(
    logical_id: str, code_dir: Path, paths: list[str], handler: str
) -> int:
    module_name, _, attribute = handler.rpartition(".")
    completed = subprocess.run(
        [sys.executable, "-S", "-c", _PROBE, json.dumps(paths), module_name, attribute],
        cwd=code_dir,
        env={"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S,
        check=False,
    )
    if completed.returncode != 0:
        error = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        print(f"FAILED {logical_id} ({handler}): {error[0]}")
        return 1
    print(f"ok     {logical_id} ({handler}) imports in {completed.stdout.strip()} ms")
    return 0


def _copy_runtime_packages(target: Path) -> None:
    for name in (*RUNTIME_PACKAGES, *RUNTIME_MODULES):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{name} is not installed next to {sys.executable}")
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, target / name)
        else:
            shutil.copy2(origin, target / origin.name)


def _load_template(path: Path) -> dict[str, Any]:
    # SAM's own YAML reader parses the CloudFormation short tags such as !Ref.
    from samcli.yamlhelper import yaml_parse

    template: dict[str, Any] = yaml_parse(path.read_text())
    return template


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
