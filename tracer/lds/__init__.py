"""The linear datamodeling score (LDS): do attribution scores predict what retraining on subsets does?"""

from __future__ import annotations

from tracer.lds.benchmark import LdsConfig, attribution_scores, format_table, run_lds
from tracer.lds.score import lds, lds_per_query, sample_subsets, spearman_rows, subset_sums, summarize_lds

__all__ = ["LdsConfig", "attribution_scores", "format_table", "lds", "lds_per_query", "run_lds",
           "sample_subsets", "spearman_rows", "subset_sums", "summarize_lds"]
