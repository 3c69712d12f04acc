"""The pure decision engine: no I/O, no clock, no globals. See `engine.reconcile`."""


def compiled() -> bool:
    """Whether the engine's hot modules run as the image builds them, compiled with mypyc
    (setup.py), rather than from their sources (an editable install, `COMPILE=0`)."""
    # On call, not at import: every engine module imports this package first, so an import here
    # would be a circle.
    from autoscaler.engine import reconcile

    return (reconcile.__file__ or "").endswith((".so", ".pyd"))
