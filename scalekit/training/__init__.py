"""Distributed training runtime: a controller in the notebook, one rank per Dask worker.

Nothing here imports ipywidgets or IPython; progress leaves as events.
"""
