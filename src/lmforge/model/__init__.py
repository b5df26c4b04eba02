"""Models: where they come from (catalogue, hub, local folders, GGUF files) and how they load."""
