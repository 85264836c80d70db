"""Visual token pruning in VLMs: adapters, attention capture, a real pruning engine, FLOPs, and analyses."""
from .compat import check_environment

__version__ = "0.1.0"

check_environment()
