"""The method league: every method x protocol x seed through the ordinary trainer, one table.
``runner`` runs the matrix (``python -m mim_jax.league``), ``cells`` builds a league's rows and
cell configs from a ``Setup``, ``report`` writes the table, its claims and figures."""
