"""gridsubmit: run a condition grid of comparison jobs on SLURM GPU partitions or locally."""

__version__ = "0.1.0"
