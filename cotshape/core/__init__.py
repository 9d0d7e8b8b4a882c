"""Shared foundations: errors, records, statistics, config, model aliases."""
