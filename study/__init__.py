"""The evaluation study (``pimgpt study``) and design-space sweeps (``pimgpt sweep``).

``points`` measures one model on one machine variant, ``sweep`` runs TOML grids of points in
parallel (local processes or a Dask cluster) and resumes them, ``sensitivity`` declares the
sensitivity dimensions, ``baselines`` times CPU/GPU baselines, ``accuracy`` compares PIM
numerics with float32, ``run`` assembles the study and ``report`` writes its folder.
"""
