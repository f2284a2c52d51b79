"""Write llmrl/data/run_items.json: per (card, situation), the item most committed runs ended with.

The capacity benchmark's pool starts with these items; shipping them keeps the
pool identical on an installed wheel, which carries no reports.
Usage: python scripts/extract_run_items.py
"""

from pathlib import Path

from llmrl.capacity.pool import RUN_ITEMS, run_items, save_run_items

if __name__ == "__main__":
    items = run_items(Path(__file__).resolve().parents[1] / "reports")
    save_run_items(RUN_ITEMS, items)
    print(f"{len(items)} run items -> {RUN_ITEMS}")
