"""The pure decision engine: no I/O, no clock, no globals. See `engine.reconcile`."""
