"""The linear datamodeling score (LDS): do attribution scores predict what retraining on subsets does?"""

from __future__ import annotations

from tracer.lds.benchmark import (LdsConfig, SubsetData, attribution_scores, format_table, method_lds, run_lds,
                                  subset_data)
from tracer.lds.score import lds, lds_per_query, sample_subsets, spearman_rows, subset_sums, summarize_lds

__all__ = ["LdsConfig", "SubsetData", "attribution_scores", "format_table", "lds", "lds_per_query", "method_lds",
           "run_lds", "subset_data",
           "sample_subsets", "spearman_rows", "subset_sums", "summarize_lds"]
