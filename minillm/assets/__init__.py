"""Files shipped inside the minillm package.

`DEFAULT_MODEL` is minillm-tiny, a ~7M-parameter Llama trained by tools/train_tiny.py on Jane
Austen's novels: small enough to run on any laptop CPU, with nothing to download.
"""
from pathlib import Path

DEFAULT_MODEL = Path(__file__).parent / "minillm-tiny"
