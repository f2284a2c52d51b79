"""`python -m llmrl` is the `llmrl` command."""

import sys

from llmrl.cli import main

sys.exit(main())
