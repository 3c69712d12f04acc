"""Scaling policies: the built-ins and the registry that finds third-party ones."""
