"""The fine-tuning pipeline the gateway owns: an OpenAI fine-tuning job carried through the
trainer, the converter, the registry and a deployment, persisted so it survives restarts."""
