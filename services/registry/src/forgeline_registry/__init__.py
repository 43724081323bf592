"""Forgeline's model registry: models, numbered versions, content-addressed artifacts, lineage
and aliases, stored on S3 (MinIO) or a local filesystem.

- `forgeline_registry.service`: the domain logic (`Registry`, made of the parts in `catalogue`,
  `uploads`, `commits` and `collection` on `registry_core`).
- `forgeline_registry.grpc_api`: the `forgeline.registry.v1.RegistryService` servicer.
- `forgeline_registry.storage`: the `ObjectStore` driver interface and its fs and S3 drivers.

Callers never import this package: they use `forgeline_registry_client` (clients/registry), whose
naming rules (`names`) this service enforces too.
"""
