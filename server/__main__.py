"""`python -m server` runs dgasr-server."""

import sys

from .server_cli import main

sys.exit(main())
