"""The Forgeline model registry's client: what the trainer, converter, gateway and CLI use to talk
to the registry. Light on purpose: no `minio`, no server code (`forgeline_registry`).

- `forgeline_registry_client.client`: `RegistryClient`, every registry call plus pushing and
  pulling directories through the registry's grants.
- `forgeline_registry_client.transfer`: blob bytes to and from the store through grants.
- `forgeline_registry_client.names`: the naming rules (models, aliases, artifact paths, digests,
  labels) the registry enforces and callers check early.
- `forgeline_registry_client.importer`: HF/ModelScope directories in, loadable directories out.
- `forgeline_registry_client.figures`: a version's measured conversion figures, as said to people.
- `forgeline_registry_client.hub`: base models by hub id (``hf:ORG/NAME``); needs the `hub` extra.
"""
