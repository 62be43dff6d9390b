"""The Llama-family model and its checkpoint loader."""
from minillm.model.config import ModelConfig
from minillm.model.llama import LlamaForCausalLM
from minillm.model.loader import CheckpointError, load_model, load_tokenizer

__all__ = ["ModelConfig", "LlamaForCausalLM", "CheckpointError", "load_model", "load_tokenizer"]
