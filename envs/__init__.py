"""The built-in environment cards, one module per family (installed as ``llmrl.envs``; see docs/cards.md)."""
