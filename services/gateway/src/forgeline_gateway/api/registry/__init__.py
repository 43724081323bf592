"""`/v1/registry/...`: the model registry, read through the gateway (Forgeline's own, admin)."""
