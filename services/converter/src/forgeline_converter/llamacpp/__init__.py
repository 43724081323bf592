"""All the converter knows of llama.cpp, in one folder (as the trainer keeps LLaMA-Factory in
``llamafactory/``): its tools one function each (``tools``), what a model directory must be for
``convert_hf_to_gguf.py`` (``source``), PEFT LoRA adapters to GGUF (``adapter``), GGUF metadata
read back (``gguf_info``), perplexity and KL divergence (``perplexity``) and the smoke generation
in ``llama-server`` (``smoke``). The rest of the converter runs conversions; it calls these."""
