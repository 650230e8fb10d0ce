"""Pallas kernels with their XLA fallbacks, and the fp8 arithmetic they share.

* `short_attention.py`: attention for short sequences, one program per (head, sequence).
* `fused_norm.py`: LayerNorm in one pass, optionally writing an e4m3 copy.
* `e4m3.py`: fp8 quantize and product in the forms XLA fuses into cuBLASLt GEMMs.

Nothing here imports a compression module: scales reach the kernels as arguments.
"""
