"""Contract fakes of the backends that cannot run here (vLLM needs a GPU, Ollama a download),
and of the model hubs this machine cannot reach (Hugging Face, ModelScope).

Each follows its project's published API documentation, cited in its module, and nothing more.
They exist for tests only: product code never imports them.
"""
