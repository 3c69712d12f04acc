"""The simulator: replays a real request trace through the same pure engine the live controller uses,
against a simulated cluster on a virtual clock. Only the edges differ from the live controller: trace
arrivals stand in for RabbitMQ, `sim.cluster` for Kubernetes. Entry points: `sim.cli` (the
`autoscaler simulate` and `autoscaler explain` commands) and `sim.runner.run`.
"""
