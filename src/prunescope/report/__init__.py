"""`prunescope report`: paper-ready tables, plots and one HTML file from the analyses on disk.

Data flows one way: `study` reads the batch file, the per-model JSON analyses and the evaluation
results into records; `tables`, `plots` and `html` turn those records into files; `command` runs
them in order. Nothing here reads a checkpoint, and matplotlib is imported only by `plots`, only
when images are written.
"""
