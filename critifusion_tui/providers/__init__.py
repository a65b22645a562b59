"""Chat backends (Together, Ollama, offline rules) behind one protocol."""
