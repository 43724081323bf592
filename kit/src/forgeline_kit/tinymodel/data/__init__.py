"""Demo datasets and the tokenizer corpus, shipped as package data (see ..datasets)."""
