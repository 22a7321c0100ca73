"""`hearth serve`: the OpenAI-compatible API server in this process, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from app.cli.runner import EXIT_OK, Session
from app.runtime.protocol import Method


def add_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API (Ctrl-C stops)")
    serve.add_argument("--host", help="address to listen on (default from settings: 127.0.0.1); any other needs --api-key")
    serve.add_argument("--port", type=int, help="TCP port (default from settings: 8080; 0 picks a free one)")
    serve.add_argument("--model", help="library id, name or path to load at start (default: loaded on the first request)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default from settings; env HEARTH_API_KEY)")
    serve.add_argument("--cors-origin", dest="cors_origins", action="append", help="allow browser requests from this origin (repeatable; default: none)")
    serve.add_argument("--queue-limit", type=int, help="requests waiting or running before 429 (default from settings: 16)")
    serve.add_argument("--max-tokens", type=int, help="the most tokens a request may ask for (default from settings: 4096)")
    serve.set_defaults(run=run)


def run(args: argparse.Namespace, session: Session) -> int:
    """Start (server.start refuses a bad address or a missing key before loading anything), wait, stop."""
    options = {
        "host": args.host, "port": args.port, "model": args.model, "api_key": args.api_key or os.environ.get("HEARTH_API_KEY"),
        "cors_origins": args.cors_origins, "queue_limit": args.queue_limit, "max_tokens": args.max_tokens,
    }
    started = session.run(Method.SERVER_START, options)  # Ctrl-C while the model loads cancels the start
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    session.console.say(f"Hearth is serving at {started['url']}/v1 (OpenAI-compatible). Ctrl-C stops.")
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:  # how a server is meant to end: not a failure
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    session.call(Method.SERVER_STOP)
    return EXIT_OK
