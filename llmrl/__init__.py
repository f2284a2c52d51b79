"""llmrl: language-model policies for Gymnasium, taught by knowledge editing."""

__version__ = "0.1.0"
