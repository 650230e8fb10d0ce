"""Compression: quantization (AQT) now; sparsity, distillation and the report to follow."""
