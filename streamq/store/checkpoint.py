"""Checkpoints of a running fit: the whole estimator state, as JSON, never pickle.

A checkpoint holds every attribute that ``MiniBatchKMeans.partial_fit`` reads or writes
(``cluster_centers_``, ``_counts``, ``_n_since_last_reassign``, ``n_steps_``,
``_batch_size``, ``_init_size``, ``_n_threads``, the ``_random_state`` Mersenne-Twister
state, ...), found generically from the estimator's ``__dict__``, plus the caller's
cursor and history. Arrays are stored as base64 of their raw bytes with dtype and shape,
so a restored estimator continues bit for bit. The checkpoint is one element of a Zarr
string array: one key, written atomically by the store (temporary file, then rename; on S3
one PUT);
:func:`read_checkpoint` / :func:`write_checkpoint` / :func:`clear_checkpoint` handle that slot.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from streamq.errors import StreamQError
from streamq.lock import check_writer

if TYPE_CHECKING:
    from streamq.store.layout import Store

__all__ = ["CheckpointMismatchError", "clear_checkpoint", "decode_state", "encode_state",
           "estimator_state", "read_checkpoint", "restore_estimator", "write_checkpoint"]


class CheckpointMismatchError(StreamQError, ValueError):
    """A checkpoint was written by another scikit-learn or for other data or settings."""


def _enc(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__array__": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode(),
                "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.random.RandomState):
        name, keys, pos, has_gauss, cached = value.get_state()
        return {"__random_state__": [name, _enc(keys), int(pos), int(has_gauss), float(cached)]}
    if isinstance(value, np.generic):
        return {"__scalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, dict):
        return {k: _enc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_enc(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


def _dec(value: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            raw = base64.b64decode(value["__array__"])
            return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
        if "__random_state__" in value:
            name, keys, pos, has_gauss, cached = value["__random_state__"]
            rs = np.random.RandomState()
            rs.set_state((name, _dec(keys), pos, has_gauss, cached))
            return rs
        if "__scalar__" in value:
            return np.dtype(value["__scalar__"]).type(value["value"])
        return {k: _dec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value


def encode_state(state: dict[str, Any]) -> str:
    """JSON text of a checkpoint dict (arrays, RandomState and numpy scalars allowed)."""
    return json.dumps(_enc(state), separators=(",", ":"))


def decode_state(text: str) -> dict[str, Any]:
    return _dec(json.loads(text))


def estimator_state(est: Any) -> dict[str, Any]:
    """Parameters and every learned/private attribute of a scikit-learn estimator."""
    import sklearn

    params = est.get_params(deep=False)
    attrs = {k: v for k, v in vars(est).items() if k not in params}
    return {"class": type(est).__name__, "sklearn": sklearn.__version__,
            "params": params, "attrs": attrs}


def restore_estimator(state: dict[str, Any]) -> Any:
    """Rebuild the estimator saved by :func:`estimator_state`, refusing other versions."""
    import sklearn
    from sklearn import cluster

    if state["sklearn"] != sklearn.__version__:
        raise CheckpointMismatchError(
            f"checkpoint was written by scikit-learn {state['sklearn']}, this is "
            f"{sklearn.__version__}; rerun the fit with --overwrite to start again"
        )
    est = getattr(cluster, state["class"])(**state["params"])
    for k, v in state["attrs"].items():
        setattr(est, k, v)
    return est


def _slot(st: Store, name: str) -> zarr.Array:
    """The one-string array of slot ``name``."""
    return st.array(name)


def read_checkpoint(st: Store, name: str, fingerprint: str, what: str) -> dict[str, Any] | None:
    """The checkpoint in slot ``name`` (created empty if missing), or None when empty.

    A checkpoint of another ``fingerprint`` (other data or parameters) is refused.
    """
    if not st.has(name):
        st.create_array(name, shape=(1,), chunks=(1,), dtype=str)
        return None
    text = _slot(st, name)[0]
    if not text:
        return None
    state = decode_state(str(text))
    if state.get("fingerprint") != fingerprint:
        raise CheckpointMismatchError(
            f"{st.path}: the {what} checkpoint belongs to other data or parameters; "
            "rerun with --overwrite to start again")
    return state


def write_checkpoint(st: Store, name: str, state: dict[str, Any]) -> None:
    """Replace the checkpoint in slot ``name`` (one key, written atomically: a temporary file
    renamed locally, one PUT on S3)."""
    check_writer()
    _slot(st, name)[0] = encode_state(state)


def clear_checkpoint(st: Store, name: str) -> None:
    """Empty slot ``name``: the result is saved, the working state is no longer needed."""
    if st.has(name):
        check_writer()
        _slot(st, name)[0] = ""
