"""`python -m metalhorn` is the `metalhorn` command."""

import sys

from metalhorn.daemons.main import main

sys.exit(main())
