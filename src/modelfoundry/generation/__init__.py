"""Text generation: the key-value cache, sampling, tokenizers and the streaming decode loop."""
