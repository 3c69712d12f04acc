"""The Kubernetes edge: a watch cache of the managed Deployments, their Pods and the Nodes, the
`ClusterView` that turns it into the engine's `ClusterSnapshot`, the `Actuator` that resizes
Deployments through the scale subresource, Kubernetes Events, and Lease leader election.

Everything here is async I/O through the official `kubernetes.aio` client; the engine never imports
this package. Caller: the live controller (`autoscaler run`).
"""
