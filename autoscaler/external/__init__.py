"""KEDA's external scaler gRPC API, answered from the engine's decisions (`autoscaler.external.scaler`).

`externalscaler.proto` is KEDA's interface definition (source, commit and licence in its header);
`externalscaler_pb2.py` / `.pyi` are generated from it by `python -m autoscaler.external.generate`
and committed, so neither the image nor an install needs protoc.
"""
