"""The k-means core: exact nearest-centre search, weighted k-means++, weighted Lloyd.

No I/O and no Dask: plain arrays in, arrays out. Every stage that clusters colours (the
shared fit, ``--algorithm lloyd``, the per-image ``histogram`` method, image groups) and
quantize's label tables call these, so each step has one definition:

- :mod:`streamq.kmeans.codes`: 24-bit colour codes (the histogram's keys);
- :mod:`streamq.kmeans.histogram`: counting colours in a reused table, exact sums of counts;
- :mod:`streamq.kmeans.nearest`: exact nearest centre, ties to the lowest index;
- :mod:`streamq.kmeans.table`: pixel labels for a fixed palette: a ``2**24`` label table,
  or a cache of recent colours for one image;
- :mod:`streamq.kmeans.plusplus`: greedy weighted k-means++;
- :mod:`streamq.kmeans.bounded`: weighted Lloyd with distance bounds, scikit-learn's ``tol``;
- :mod:`streamq.kmeans.starts`: starts + Lloyd, best of several;
- :mod:`streamq.kmeans.rgba`: exact k-means on a premultiplied RGBA histogram (colours with
  alpha: the shared fit and the per-image fit of images with alpha).
"""

from streamq.kmeans.bounded import LloydResult, fixed_point, lloyd, tolerance
from streamq.kmeans.codes import codes_to_points, codes_to_rgb, distinct_colours, rgb_to_codes
from streamq.kmeans.nearest import assign, inertia
from streamq.kmeans.plusplus import kmeans_plusplus
from streamq.kmeans.starts import converge, initial_centers, kmeans
from streamq.kmeans.table import label_pixels

__all__ = ["LloydResult", "assign", "codes_to_points", "codes_to_rgb", "converge", "distinct_colours",
           "fixed_point", "inertia", "initial_centers", "kmeans", "kmeans_plusplus", "label_pixels", "lloyd",
           "rgb_to_codes", "tolerance"]
