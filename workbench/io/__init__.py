"""Files: atomic writes, safetensors reading and writing, YAML loading, the data directory rule."""
