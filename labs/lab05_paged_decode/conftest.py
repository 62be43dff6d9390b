"""Lab 5 runs Triton kernels on the CPU, under the Triton interpreter.

The tests build their kernels as interpreted functions themselves; the switch is also set here,
when pytest first enters this folder, for the engine's Triton backend (the integration test),
which only runs on a CPU under the interpreter.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
