"""Everything that knows LLaMA-Factory: its arguments, its CLI, and the files it writes."""
