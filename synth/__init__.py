"""stillhouse's generator and curation package: seeds and a teacher model into training data.

Importing it is cheap: no torch, no vllm. The parts that need them import them when used.
"""

__version__ = "0.1.0"
