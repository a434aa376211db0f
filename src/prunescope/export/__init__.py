"""Output side: write an analysed model in forms runtimes load (`prunescope export`).

`source` gathers what stages 1-4 know of the model plus its tensors' values (read through the
readers' byte ranges, never by running a pickle); `hf`, `padded` and `gguf` write one target each;
`command` is the command line.
"""
