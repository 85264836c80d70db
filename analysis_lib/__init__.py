"""Visual token pruning in VLMs: adapters, attention capture, a real pruning engine, FLOPs, and analyses."""
__version__ = "0.1.0"
