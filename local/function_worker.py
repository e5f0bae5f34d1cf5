"""The child process that runs one function's handler, like a Lambda container.

Started by :mod:`local.functions` as
``python -P local/function_worker.py REQUEST_FD RESPONSE_FD``, with the
function's environment, ``PYTHONPATH=CodeUri:shared`` and the function's
code directory as working directory. It imports the handler once (a cold
start), sends one ``ready`` line, then runs one invocation per request line
and writes one response line for each. Both pipes carry JSON lines, so the
handler's own stdout and stderr stay free for its logs.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import uuid
from typing import Any

__all__ = ["LambdaContext", "main"]


class LambdaContext:
    """The attributes and method of the Lambda Python context object."""

    def __init__(self, request_id: str, deadline: float) -> None:
        name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        region = os.environ.get("AWS_REGION", "us-east-1")
        account = os.environ.get("LOCAL_ACCOUNT_ID", "123456789012")
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
        self.memory_limit_in_mb = int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self.identity = None
        self.client_context = None
        self._deadline = deadline

    def __repr__(self) -> str:
        return f"<LambdaContext {self.function_name} {self.aws_request_id}>"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _load_handler(spec: str) -> Any:
    module_name, _, attribute = spec.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attribute)


def _module_name() -> str:
    return os.environ["LOCAL_HANDLER"].rpartition(".")[0]


def _error_payload(exc: BaseException) -> dict[str, Any]:
    # The shape Lambda reports for an unhandled exception.
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def _invoke(handler: Any, request: dict[str, Any]) -> dict[str, Any]:
    request_id = request.get("requestId") or str(uuid.uuid4())
    context = LambdaContext(request_id, float(request["deadline"]))
    try:
        result = handler(request["event"], context)
    except Exception as exc:
        traceback.print_exc()
        return {"ok": False, "error": _error_payload(exc)}
    return {"ok": True, "result": result}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    requests = os.fdopen(int(args[0]), "rb", buffering=0)
    responses = os.fdopen(int(args[1]), "wb", buffering=0)

    def send(message: dict[str, Any]) -> None:
        responses.write(json.dumps(message, default=str).encode() + b"\n")

    handler = None
    import_error = None
    try:
        handler = _load_handler(os.environ["LOCAL_HANDLER"])
    except Exception as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == _module_name()
        if missing:
            print(f"handler module not found: {exc}", flush=True)
        else:
            traceback.print_exc()
        import_error = _error_payload(exc)
    send({"ready": True, "importError": import_error})

    buffer = b""
    while True:
        chunk = requests.read(65536)
        if not chunk:
            return 0
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            if handler is None:
                send({"ok": False, "error": import_error})
                continue
            sys.stdout.flush()
            send(_invoke(handler, request))
            sys.stdout.flush()
            sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
