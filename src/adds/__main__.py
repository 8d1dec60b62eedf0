"""``python -m adds``: the command line (:mod:`adds.cli`). Ctrl+C while it starts exits 130 without a traceback."""

import sys

try:
    from adds.cli import main
except KeyboardInterrupt:  # pragma: no cover (a Ctrl+C during the first imports)
    print("adds: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
