"""Files shipped inside the minillm package.

`DEFAULT_MODEL` is minillm-tiny, a ~7M-parameter Llama trained by tools/train_tiny.py on Jane
Austen's novels: small enough to run on any laptop CPU, with nothing to download.
`HELD_OUT_TEXT` is 17 KB of those novels it never saw in training (the first paragraphs of each
book's held-out split, made by tools/get_corpus.py; public domain): accuracy checks score it.
"""
from pathlib import Path

DEFAULT_MODEL = Path(__file__).parent / "minillm-tiny"
HELD_OUT_TEXT = Path(__file__).parent / "austen_heldout.txt"
