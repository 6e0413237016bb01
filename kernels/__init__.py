"""CUDA kernels of gpuckpt, importable as ``gpuckpt.kernels``."""
