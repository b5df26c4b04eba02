"""lmforge: from a pile of data to a fine-tuned, evaluated, served and exported language model."""

__version__ = "0.1.0"
