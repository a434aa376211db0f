"""Stage 4: what tensors hold, read from their bytes.

- `layers`: the cheap pass every analysis makes: all-zero layers and a content fingerprint per layer
  (the first page of each tensor).
- `scan`: the full content scan (`--sparsity`): nonzeros, N:M patterns, zeroed rows and columns, on
  all cores with numpy; `scan_torch` is its torch engine for `--device cuda`.
"""
