"""Command line entry: parse the options, build the app, run uvicorn until interrupted."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

from .settings import add_arguments, settings_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sd-core serve", description="Serve the AUTOMATIC1111 web UI API (/sdapi/v1) on this machine."
    )
    add_arguments(parser)
    return parser


def serve(args: argparse.Namespace) -> int:
    """Run the server for parsed `serve` options; returns the exit code (1 when it could not start)."""
    settings = settings_from_args(args)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        print(f"sd-core serve needs the server extra: pip install 'sd-core[server]' ({exc})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    app = create_app(settings)
    jobs = app.state.sd.jobs

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Stop the running generation now, not after the graceful-shutdown timeout. From another thread: a signal
            # handler runs on the main thread, which may be holding the queue's lock at this very moment.
            threading.Thread(target=jobs.close, kwargs={"timeout": 0}, daemon=True).start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = Server(config)
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return serve(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"sd-core serve: error: {exc}", file=sys.stderr)
        return 2
