"""`dgasr-server`'s entry point: options first (no torch), then the server.

Exit codes: 0 stopped cleanly (SIGINT/SIGTERM), 1 the model could not be loaded,
2 bad usage (an option, or an address that cannot be listened on).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from .options import parse_args

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import serve_until_signalled

    return asyncio.run(serve_until_signalled(config))


if __name__ == "__main__":
    sys.exit(main())
