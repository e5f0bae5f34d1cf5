"""``python -m local``: run the local stack, or talk to a running one.

Commands::

    python -m local [--port 3000]          start the stack (what `make dev` runs)
    python -m local send QUEUE BODY [--attr NAME=VALUE ...] [--reply-to QUEUE]
    python -m local receive QUEUE [--wait 10]
    python -m local fail TARGET MODE       TARGET: demo, openai, anthropic
    python -m local recorded TARGET        TARGET: slack, pagerduty, demo, llm
    python -m local status                 print the running stack's URLs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from local import control
from local.stack import LocalStack, StackOptions, StackStartError, read_state

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("run", "send", "receive", "fail", "recorded", "status")


def _build_parser() -> argparse.ArgumentParser:
    state_dir_help = (
        "directory of the stack's state: stack.json, embedded PostgreSQL data, "
        "generated keys, moto's log (default .local-stack/, env LOCAL_STATE_DIR)"
    )
    # Accepted before and after the command; SUPPRESS keeps the subcommand's
    # default from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", type=Path, default=argparse.SUPPRESS, help=state_dir_help
    )
    parser = argparse.ArgumentParser(
        prog="python -m local",
        description="Run template.yaml locally (no AWS account, no Docker), "
        "or talk to the running local stack. Without a command: run.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("LOCAL_STATE_DIR", ROOT / ".local-stack")),
        help=state_dir_help,
    )
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser(
        "run", parents=[common], help="start the local stack (the default command)"
    )
    run.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "3000")),
        help="port of the HTTP API on 127.0.0.1 (default 3000, env PORT)",
    )
    run.add_argument(
        "--moto-port",
        type=int,
        default=_optional_int(os.environ.get("LOCAL_MOTO_PORT")),
        help="port of the moto server, the local AWS endpoint (default: the API "
        "port + 1, env LOCAL_MOTO_PORT)",
    )
    run.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a template parameter (repeatable)",
    )
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an environment variable in every function, after the template "
        "and the local overrides, e.g. LLM_BREAKER_RESET_S=5 (repeatable)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=2,
        help="maximum concurrent invocations of one function (default 2)",
    )
    run.add_argument(
        "--retry-visibility",
        type=int,
        default=_optional_int(os.environ.get("LOCAL_RETRY_VISIBILITY_S")),
        metavar="SECONDS",
        help="make a failed SQS message visible again after SECONDS instead of "
        "the queue's visibility timeout (env LOCAL_RETRY_VISIBILITY_S)",
    )
    run.add_argument(
        "--schedule-interval",
        type=float,
        default=_optional_float(os.environ.get("LOCAL_SCHEDULE_INTERVAL_S")),
        metavar="SECONDS",
        help="run every schedule event this often instead of its rate() "
        "(env LOCAL_SCHEDULE_INTERVAL_S)",
    )
    run.add_argument(
        "--demo-reset-timeout",
        type=float,
        default=float(os.environ.get("LOCAL_DEMO_RESET_TIMEOUT_S", "10")),
        metavar="SECONDS",
        help="cooldown of the demo service's breaker (default 10)",
    )

    send = commands.add_parser(
        "send", parents=[common], help="send a message to a local SQS queue"
    )
    send.add_argument("queue", help="queue name, e.g. batch-items")
    send.add_argument("body", help="message body (JSON)")
    send.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="String message attribute, e.g. orgId=acme or replyTo=replies "
        "(repeatable)",
    )
    send.add_argument(
        "--reply-to",
        metavar="QUEUE",
        help="ask for the result on this queue (created when missing); read it "
        "with `python -m local receive QUEUE`",
    )
    send.add_argument(
        "--group-id", help="MessageGroupId (FIFO queues; default 'default')"
    )

    receive = commands.add_parser(
        "receive", parents=[common], help="receive and delete messages of a queue"
    )
    receive.add_argument("queue")
    receive.add_argument(
        "--wait", type=int, default=10, help="seconds to wait (max 20)"
    )

    fail = commands.add_parser(
        "fail", parents=[common], help="make the demo service or an LLM provider fail"
    )
    fail.add_argument("target", choices=("demo", "openai", "anthropic"))
    fail.add_argument(
        "mode",
        help="ok (recover), an HTTP status such as 503 or 429, hang, or an LLM "
        "server mode such as 529 or slow_stream",
    )

    recorded = commands.add_parser(
        "recorded", parents=[common], help="show what a stand-in received"
    )
    recorded.add_argument("target", choices=("slack", "pagerduty", "demo", "llm"))

    commands.add_parser(
        "status", parents=[common], help="print the URLs of the running stack"
    )
    return parser


def _optional_int(raw: str | None) -> int | None:
    return int(raw) if raw else None


def _optional_float(raw: str | None) -> float | None:
    return float(raw) if raw else None


def _parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"invalid {option} {pair!r}: write NAME=VALUE")
        result[name] = value
    return result


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `python -m local --port 4000` runs the stack, as `make dev` does.
    # `python -m local --help` still lists the commands.
    asks_help = any(arg in ("-h", "--help") for arg in args_list)
    if not asks_help and not any(arg in COMMANDS for arg in args_list):
        args_list.insert(0, "run")
    args = _build_parser().parse_args(args_list)

    if args.command == "run":
        return _run(args)
    try:
        state = read_state(args.state_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "send":
        try:
            json.loads(args.body)
        except ValueError as exc:
            print(f"error: the message body is not valid JSON: {exc}", file=sys.stderr)
            return 2
        attributes = _parse_pairs(args.attr, "attribute")
        if args.reply_to:
            control.create_queue(state, args.reply_to)
            attributes["replyTo"] = args.reply_to
        result: Any = control.send_message(
            state, args.queue, args.body, attributes, args.group_id
        )
    elif args.command == "receive":
        result = control.receive_messages(state, args.queue, args.wait)
    elif args.command == "fail":
        result = control.set_failure(state, args.target, args.mode)
    elif args.command == "recorded":
        result = control.recorded(state, args.target)
    else:
        result = state
    if args.command == "fail":
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s | %(message)s",
        datefmt="%H:%M:%S",
    )
    # One line per request to moto or a stand-in is noise next to the
    # gateway's and pollers' own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = StackOptions(
        root=ROOT,
        state_dir=args.state_dir.resolve(),
        port=args.port,
        moto_port=args.moto_port or args.port + 1,
        parameters=_parse_pairs(args.parameter, "parameter"),
        extra_env=_parse_pairs(args.env, "--env setting"),
        max_workers=args.workers,
        retry_visibility_s=args.retry_visibility,
        schedule_interval_s=args.schedule_interval,
        demo_reset_timeout_s=args.demo_reset_timeout,
    )
    stack = LocalStack(options)

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGTERM (from a test or a supervisor) stops the stack like Ctrl-C does.
    # SIGINT is set too because a shell that starts the stack in the
    # background makes it inherit SIGINT as ignored.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        info = stack.start()
        print(control.banner(info), flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        logging.getLogger("local").info("stack.stopping")
    except StackStartError as exc:
        logging.getLogger("local").error("stack.start_failed: %s", exc)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and orphan children.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
