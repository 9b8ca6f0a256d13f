"""`python -m server` runs dgasr-server."""

import sys

from server.cli.server import main

sys.exit(main())
