"""DVC glue: stage helpers, code fingerprints (depgraph), presets."""
