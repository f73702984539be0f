"""What a run reads besides its spec, fingerprinted.

A run's key is a function of its spec alone, so a resumed sweep (or capacity search, or
reproduction) would reuse runs made from a trace file, a profile or a predictor model that has
changed since. :func:`fingerprints` hashes the content of every such input of a list of specs
(bundled ones included: they change with the package); the stores record it and refuse to
resume across a change (:func:`check_unchanged`), saying which input changed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

_CACHE: dict[tuple, str] = {}  # (path, size, mtime_ns) -> digest, for one process


def _digest_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()[:16]
    return _CACHE[key]


def _digest(path: Path) -> str:
    """A file's content hash; a directory's over its files' relative names and contents (caches excluded)."""
    if path.is_file():
        return _digest_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "embeddings.npz"):
        h.update(f"{f.relative_to(path).as_posix()}\0{_digest_file(f)}\0".encode())
    return h.hexdigest()[:16]


def input_paths(spec) -> dict[str, Path]:
    """``{label: path}`` of the files and directories a run of ``spec`` reads (those that exist)."""
    from simulator.profile import profile_source
    from syncintellects.spec import learned_model_dir, run_predictor
    from traces.loaders import BUNDLED, bundled_file

    out: dict[str, Path] = {}
    trace = str(spec.trace)
    if trace in BUNDLED and not Path(trace).exists():
        try:
            out[f"trace {trace}"] = Path(bundled_file(trace))
        except (ImportError, OSError, ValueError):  # sharegpt not installed: the run's own check says so
            pass
    else:
        out[f"trace {trace}"] = Path(trace)
    for value in {spec.profile, *(spec.replica_profiles or ())}:
        name, path, _ = profile_source(value)
        out[f"profile {name}"] = Path(str(path))
    model = learned_model_dir(spec)
    if model is not None:
        label = spec.predictor_model if spec.predictor_model is not None else f"(shipped {run_predictor(spec)})"
        out[f"predictor model {label}"] = model
    return {k: v for k, v in out.items() if v.exists()}


def fingerprints(specs) -> dict[str, str]:
    """``{label: content hash}`` over every input of every spec."""
    out: dict[str, str] = {}
    for spec in specs:
        for label, path in input_paths(spec).items():
            if label not in out:
                out[label] = _digest(path)
    return out


def check_unchanged(old: dict | None, new: dict[str, str], where: str) -> None:
    """Refuse (ValueError, one line) to resume ``where`` when an input both runs read has changed."""
    for label, digest in sorted((old or {}).items()):
        if label in new and new[label] != digest:
            raise ValueError(f"{where}: {label} has changed since its runs were made (content {digest} -> "
                             f"{new[label]}); --fresh reruns them, or use another --out")
