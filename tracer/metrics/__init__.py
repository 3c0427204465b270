"""Retrieval metrics, bootstrap aggregation, TREC I/O and reports for fact tracing.

Lifecycle: rankings (``run``) and ground truth (``qrels``) → per-query metrics
(:func:`evaluate_run`) → means with bootstrap CIs (:func:`aggregate`) → report files
(:func:`write_report`). Runs and qrels travel as TREC files (:mod:`tracer.metrics.trec`).
"""

from __future__ import annotations

from tracer.metrics.bootstrap import aggregate, bootstrap_ci
from tracer.metrics.report import format_ci, markdown_table, write_report
from tracer.metrics.retrieval import (
    DEFAULT_KS,
    evaluate_ranking,
    evaluate_run,
    ndcg_at_k,
    precision_at_k,
    queries_without_relevant,
    recall_at_k,
    reciprocal_rank,
    success_at_k,
)
from tracer.metrics.trec import read_qrels, read_run, run_doc_ids, write_qrels, write_run

__all__ = [
    "DEFAULT_KS",
    "aggregate",
    "bootstrap_ci",
    "evaluate_ranking",
    "evaluate_run",
    "format_ci",
    "markdown_table",
    "ndcg_at_k",
    "precision_at_k",
    "queries_without_relevant",
    "read_qrels",
    "read_run",
    "recall_at_k",
    "reciprocal_rank",
    "run_doc_ids",
    "success_at_k",
    "write_qrels",
    "write_report",
    "write_run",
]
