"""llmrl: language-model policies for Gymnasium, taught by knowledge editing."""

__version__ = "0.1.0"

import os as _os

if "LLMRL_DRIVER_PID" in _os.environ:  # a grid's worker process: die with the driver (llmrl.backends)
    from llmrl.backends import die_with_driver

    die_with_driver()
