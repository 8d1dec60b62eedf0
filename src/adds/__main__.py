import sys

from adds.cli import main

sys.exit(main())
