"""Plumbing every stage shares: config dataclasses, errors, atomic writes, devices, CLI helpers, versions."""
