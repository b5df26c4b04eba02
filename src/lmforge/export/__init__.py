"""`lmforge export`: base + adapters merged into one folder (safetensors shards, tokenizer with
the training chat template, generation config, Ollama Modelfile, model card), optionally a GGUF
file, each loaded back and compared with the model that was trained (docs/export.md).

run.py drives the steps; each other module does one of them.
"""
