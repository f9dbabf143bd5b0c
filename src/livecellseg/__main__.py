"""`python -m livecellseg` (and `torchrun -m livecellseg predict ...`): the CLI."""

import sys

from livecellseg.cli import main

sys.exit(main())
