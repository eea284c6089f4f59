"""Where stores and outputs live: a local folder, or an fsspec URL such as ``s3://bucket/x.zarr``.

A :class:`Location` is an absolute local path or a URL, plus the storage options that reach
it (for S3: ``endpoint_url``, ``key``/``secret``, ``anon``, ``client_kwargs``...). It is
small and picklable: Dask tasks receive it and open the store themselves, so pixels and
labels never pass through the client. Local paths stay plain paths handled by ``os`` (and
Zarr's ``LocalStore``), as fast as before; URLs go through fsspec.

Whole-file writes are atomic in both worlds: locally a temporary file is fsynced and renamed
over the target, then its folder is fsynced (:func:`write_atomic`, the one place streamq
does this: lock files, palettes, reports and exported images all go through it); on an
object store one object is written by one PUT, which readers see whole or not at all.

Deletes name their files or keys one by one (:meth:`Location.remove_files`,
:func:`delete_keys`): fsspec's ``rm`` reads ``[``, ``*`` and ``?`` in a path as a glob
pattern, so ``photo[1].png`` would delete ``photo1.png`` and keep itself. streamq never calls
it, and Zarr's stores at URLs delete through :func:`delete_keys` too (``store.zarr_root``).

Problems with a URL -- an unknown scheme, a missing package, no credentials, an unreachable
endpoint, a missing bucket, access denied -- become one-line :class:`~streamq.errors.StoreError`
messages that say what to check (:func:`storage_errors`, :func:`check_access`).

The package: :mod:`~streamq.fs.location` (:class:`Location`, :func:`location`, deletes),
:mod:`~streamq.fs.atomic` (whole local files) and :mod:`~streamq.fs.access` (the one-line
errors, for anything shaped like a Location: :class:`~streamq.fs.access.Target`); the first
imports the other two.
"""

from streamq.fs.access import SCHEMES, explain_failure, storage_errors
from streamq.fs.atomic import write_atomic, write_new
from streamq.fs.location import Location, check_access, delete_keys, join, location, looks_like_url

__all__ = ["SCHEMES", "Location", "check_access", "delete_keys", "explain_failure", "join",
           "location", "looks_like_url", "storage_errors", "write_atomic", "write_new"]
