"""gpu-autoscaler: an event-driven, GPU-, cost- and quota-aware autoscaler for Kubernetes."""

__version__ = "0.1.0"
