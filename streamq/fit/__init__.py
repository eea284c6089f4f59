"""The shared palette fit, one stage of the package (the fit family).

Modules, each importing only those below it:

- :mod:`streamq.fit.driver`: :func:`fit`, the checks, the fingerprint, the phases in order,
  the result saved;
- :mod:`streamq.fit.evaluate`: :func:`collection_mse`, a palette's exact MSE over every pixel;
- :mod:`streamq.fit.alpha`: the fit of a collection with alpha (premultiplied RGBA);
- :mod:`streamq.fit.quality`: a quality target instead of K (``fit --quality``);
- :mod:`streamq.fit.minibatch`: phase 1, the streamed mini-batch fit (scikit-learn
  ``MiniBatchKMeans``);
- :mod:`streamq.fit.lloyd`: phase 2, exact Lloyd on the colour histogram, and the exact MSE.

:class:`FitResult` and :func:`load_fit` live in the store layer (:mod:`streamq.results`) and
are named here too.
"""

from __future__ import annotations

from streamq.fit.driver import fit
from streamq.fit.evaluate import collection_mse
from streamq.results import FitResult, load_fit

__all__ = ["FitResult", "collection_mse", "fit", "load_fit"]
