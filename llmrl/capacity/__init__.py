"""Editing at scale: the item pool and the capacity benchmark (``llmrl bench edits``)."""
