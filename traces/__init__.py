"""Workload traces: one schema, loaders for real trace formats, transforms and synthetic generators.

    from traces import load_trace, rescale_rate, slice_window
    trace = rescale_rate(load_trace("azure-conv"), 2.0)   # 2 req/s on average

See :mod:`traces.loaders` for bundled names, :mod:`traces.formats` for the file formats,
:mod:`traces.synthetic` for arrival processes and length distributions.
"""
from traces.formats import FORMATS, detect_format, write_trace_csv
from traces.loaders import BUNDLED, bundled_names, load_trace
from traces.schema import Trace, TraceError, make_trace, validate_columns
from traces.synthetic import EmpiricalLengths, LognormalLengths, arrival_times, synthesize, with_synthetic_arrivals
from traces.transforms import rescale_rate, scale_lengths, select_requests, slice_window, tile_trace

__all__ = [
    "BUNDLED", "FORMATS", "EmpiricalLengths", "LognormalLengths", "Trace", "TraceError", "arrival_times",
    "bundled_names", "detect_format", "load_trace", "make_trace", "rescale_rate", "scale_lengths", "select_requests",
    "slice_window", "tile_trace",
    "synthesize", "validate_columns", "with_synthetic_arrivals", "write_trace_csv",
]
