"""``python -m backend [--host H] [--port P]``: serve the ML backend with uvicorn (settings from the environment).

``python -m backend admin ...``: the admin console's CLI (``backend.admin.cli``; ``admin --help``).

A start the environment refuses (a bad setting, an unknown SAM_MODEL, base weights that cannot be had)
prints ``error: <what to fix>`` on one line and exits with status 2 (``backend.startup``).
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_REFUSED = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["admin"]:
        from backend.admin.cli import main as admin_main

        return admin_main(argv[1:])
    return serve(argv)


def serve(argv: list[str]) -> int:
    # Imported here and late: the model stack (torch, SAM) takes seconds to import, the admin CLI needs
    # none of it, and a bad setting is said before it loads.
    from backend.startup import StartupError, read_settings, start_services

    parser = argparse.ArgumentParser(prog="python -m backend", description="samloop: Label Studio ML backend")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9090, help="port (default 9090, Label Studio's usual)")
    args = parser.parse_args(argv)
    try:
        settings = read_settings()
        logging.basicConfig(level=settings.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        services = start_services(settings)
    except StartupError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the message holds
        return EXIT_REFUSED
    try:
        import uvicorn

        from backend.app import create_app

        # One worker process: the model is loaded once and shared by the threadpool.
        uvicorn.run(create_app(settings, services=services), host=args.host, port=args.port,
                    log_level=settings.LOG_LEVEL.lower(), workers=1)
    finally:
        services.close()  # already closed by the app's shutdown, unless uvicorn stopped before its startup
    return 0


if __name__ == "__main__":
    sys.exit(main())
