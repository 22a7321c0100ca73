"""Quantization: GGUF through llama.cpp's own converter and quantizer, torch weight-only schemes,
and the quality report every run ends with.

Kept free of heavy imports (torch, llama_cpp, gguf): the CLI and the worker import this package
to list targets long before they quantize anything. The pieces:

- ``targets``: the registry of target names (GGUF file types, torch schemes) and size estimates;
- ``gguf``: HF folder -> GGUF conversion and llama.cpp quantization, each in a child process;
- ``child``: what those child processes run;
- ``safety``: source checks, free space, temp names and the verified rename;
- ``evaluate`` / ``evaluate_torch``: perplexity, KL divergence, size and speed against the source;
- ``pipeline``: the whole run (`pipeline.run`);
- ``torch_quant``: torch weight-only int8/int4 (a colleague's module).
"""
