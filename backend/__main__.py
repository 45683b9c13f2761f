"""``python -m backend [--host H] [--port P]``: serve the ML backend with uvicorn (settings from the environment).

``python -m backend admin ...``: the admin console's CLI (``backend.admin.cli``; ``admin --help``).
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["admin"]:
        from backend.admin.cli import main as admin_main

        return admin_main(argv[1:])
    return serve(argv)


def serve(argv: list[str]) -> int:
    # Imported here: the model stack (torch, SAM) takes seconds to import, and the admin CLI needs none of it.
    import uvicorn
    from pydantic import ValidationError

    from backend.app import create_app
    from backend.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m backend", description="samloop: Label Studio ML backend")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9090, help="port (default 9090, Label Studio's usual)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: bad environment settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One worker process: the model is loaded once and shared by the threadpool.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.LOG_LEVEL.lower(),
                workers=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
