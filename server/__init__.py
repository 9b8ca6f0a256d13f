"""dgasr: a streaming speech-to-text server built on a diffusion ASR model."""

__version__ = "0.1.0"
