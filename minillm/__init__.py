"""minillm: a compact LLM serving engine, built step by step in the course's chapters."""
from minillm.entrypoints.llm import LLM
from minillm.outputs import CompletionOutput, Logprob, RequestOutput
from minillm.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutputKind", "RequestOutput", "CompletionOutput", "Logprob"]
