"""gRPC building blocks every Forgeline service and client shares.

- `forgeline_kit.grpc.server`: `GrpcService` / `run_grpc_service`, the one server bootstrap.
- `forgeline_kit.grpc.interceptors`: Prometheus metrics and domain-error mapping for servers.
- `forgeline_kit.grpc.health`: grpc.health.v1 that ends its watches when a drain begins.
- `forgeline_kit.grpc.client`: `make_channel`, with deadlines, retries and domain errors.
"""
