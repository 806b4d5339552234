"""`python -m cnn.summary`: see `cnn/summary/cli.py`."""

import sys

from cnn.summary import cli

sys.exit(cli.main())
