"""One source of settings: every EngineConfig field is an `LLM` keyword and a CLI flag of the
same (vLLM's) name, with the same default and the same checks."""
import argparse
from dataclasses import fields

import pytest

from minillm import LLM
from minillm.config import EngineConfig
from minillm.entrypoints.openai.cli_args import add_engine_arguments, engine_config, engine_flags


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_field_is_a_flag_with_its_default():
    assert engine_config(parse()) == EngineConfig()
    flags = {a.dest for a in _actions()}
    assert {f.name for f in fields(EngineConfig)} <= flags


def _actions():
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser._actions


def test_flags_reach_the_config():
    args = parse("--max-num-seqs", "3", "--no-enable-prefix-caching", "--dtype", "half",
                 "--preemption-mode", "swap", "--kv-cache-memory-bytes", "1000000",
                 "--gpu-memory-utilization", "0.5")
    assert engine_config(args) == EngineConfig(max_num_seqs=3, enable_prefix_caching=False,
                                               dtype="float16", preemption_mode="swap",
                                               kv_cache_memory_bytes=1_000_000,
                                               gpu_memory_utilization=0.5)
    assert engine_config(parse(*engine_flags(args))) == engine_config(args)  # round trip


@pytest.mark.parametrize("argv", [["--block-size", "12"], ["--scheduling-policy", "lifo"],
                                  ["--attention-backend", "flash"], ["--dtype", "int4"]])
def test_flags_refuse_what_the_config_refuses(argv):
    with pytest.raises(SystemExit):
        parse(*argv)
    name = argv[0][2:].replace("-", "_")
    with pytest.raises(ValueError, match=name):
        EngineConfig(**{name: type(getattr(EngineConfig(), name))(argv[1])
                        if argv[1].isdigit() else argv[1]})


def test_llm_takes_the_fields_and_nothing_else():
    with pytest.raises(TypeError, match="max_num_seq"):
        LLM(max_num_seq=4)  # a typo is an error, not a silently ignored setting
    with pytest.raises(ValueError, match="max_num_seqs"):
        LLM(max_num_seqs=0)
