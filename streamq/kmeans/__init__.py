"""The k-means core: exact nearest-centre search, weighted k-means++, weighted Lloyd.

No I/O and no Dask: plain arrays in, arrays out. Every stage that clusters colours (the
shared fit, ``--algorithm lloyd``, the per-image ``histogram`` method, quantize's label
tables) calls these functions, so there is one definition of each step.
"""
