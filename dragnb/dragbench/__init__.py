"""DragBench: read the benchmark safely, run drag methods on it at scale (resumable, many processes), measure.

    from dragnb.dragbench import read_sample, write_sample, save_sample, convert_dataset, find_samples
    python -m dragnb dragbench DATA_DIR --out OUT [--model M] [--methods a,b] [--limit N]

See docs/dragbench.md.
"""
from .format import (FORMATS, Sample, SampleRef, convert_dataset, draw_user_drag, find_samples, read_sample,
                     save_sample, write_sample)
from .metrics import DiftFeatures, fidelity, lpips_status, match_points, point_distances
from .safe_pickle import RestrictedUnpickler, UnsafePickleError, load_meta_pickle
from .world import make_world_dataset, world_sample

__all__ = ["FORMATS", "Sample", "SampleRef", "convert_dataset", "draw_user_drag", "find_samples", "read_sample",
           "save_sample", "write_sample", "DiftFeatures", "fidelity", "lpips_status", "match_points",
           "point_distances", "RestrictedUnpickler", "UnsafePickleError", "load_meta_pickle", "make_world_dataset",
           "world_sample"]
