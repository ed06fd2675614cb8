"""The model zoo: named, trained models with their recipes and evaluation sets."""

from zoo.registry import ZooEntry, get_entry, list_entries

__all__ = ["ZooEntry", "get_entry", "list_entries"]
