from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_BM25: _ClassVar[Method]
    METHOD_EMBEDDING: _ClassVar[Method]
    METHOD_TRACIN: _ClassVar[Method]
    METHOD_TRACIN_COS: _ClassVar[Method]
    METHOD_INFLUENCE: _ClassVar[Method]
    METHOD_TRAK: _ClassVar[Method]
    METHOD_RANDOM: _ClassVar[Method]

class CandidateSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDIDATE_SOURCE_UNSPECIFIED: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_BM25: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_EMBEDDING: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_GRADIENT: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_UNION: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_FULL: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_AUTO: _ClassVar[CandidateSource]

class EvaluatePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATE_POLICY_UNSPECIFIED: _ClassVar[EvaluatePolicy]
    EVALUATE_POLICY_CANDIDATES: _ClassVar[EvaluatePolicy]
    EVALUATE_POLICY_FTRACE: _ClassVar[EvaluatePolicy]
    EVALUATE_POLICY_FULL: _ClassVar[EvaluatePolicy]
METHOD_UNSPECIFIED: Method
METHOD_BM25: Method
METHOD_EMBEDDING: Method
METHOD_TRACIN: Method
METHOD_TRACIN_COS: Method
METHOD_INFLUENCE: Method
METHOD_TRAK: Method
METHOD_RANDOM: Method
CANDIDATE_SOURCE_UNSPECIFIED: CandidateSource
CANDIDATE_SOURCE_BM25: CandidateSource
CANDIDATE_SOURCE_EMBEDDING: CandidateSource
CANDIDATE_SOURCE_GRADIENT: CandidateSource
CANDIDATE_SOURCE_UNION: CandidateSource
CANDIDATE_SOURCE_FULL: CandidateSource
CANDIDATE_SOURCE_AUTO: CandidateSource
EVALUATE_POLICY_UNSPECIFIED: EvaluatePolicy
EVALUATE_POLICY_CANDIDATES: EvaluatePolicy
EVALUATE_POLICY_FTRACE: EvaluatePolicy
EVALUATE_POLICY_FULL: EvaluatePolicy

class TraceRequest(_message.Message):
    __slots__ = ("index", "prompt", "target", "method", "candidates", "top_k", "num_candidates", "include_text", "query_id", "budget_ms")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    index: str
    prompt: str
    target: str
    method: Method
    candidates: CandidateSource
    top_k: int
    num_candidates: int
    include_text: bool
    query_id: str
    budget_ms: float
    def __init__(self, index: _Optional[str] = ..., prompt: _Optional[str] = ..., target: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., candidates: _Optional[_Union[CandidateSource, str]] = ..., top_k: _Optional[int] = ..., num_candidates: _Optional[int] = ..., include_text: _Optional[bool] = ..., query_id: _Optional[str] = ..., budget_ms: _Optional[float] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("example_id", "rank", "score", "text", "text_truncated", "checkpoint_scores", "topk_fraction", "stable", "score_low", "score_high")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SCORES_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_LOW_FIELD_NUMBER: _ClassVar[int]
    SCORE_HIGH_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    rank: int
    score: float
    text: str
    text_truncated: bool
    checkpoint_scores: _containers.RepeatedScalarFieldContainer[float]
    topk_fraction: float
    stable: bool
    score_low: float
    score_high: float
    def __init__(self, example_id: _Optional[str] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., text_truncated: _Optional[bool] = ..., checkpoint_scores: _Optional[_Iterable[float]] = ..., topk_fraction: _Optional[float] = ..., stable: _Optional[bool] = ..., score_low: _Optional[float] = ..., score_high: _Optional[float] = ...) -> None: ...

class TraceResponse(_message.Message):
    __slots__ = ("query_id", "prompt", "target", "index", "index_fingerprint", "method", "candidates", "hits", "timings_ms", "num_candidates", "recall_ceiling")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INDEX_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RECALL_CEILING_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    prompt: str
    target: str
    index: str
    index_fingerprint: str
    method: Method
    candidates: CandidateSource
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timings_ms: _containers.ScalarMap[str, float]
    num_candidates: int
    recall_ceiling: float
    def __init__(self, query_id: _Optional[str] = ..., prompt: _Optional[str] = ..., target: _Optional[str] = ..., index: _Optional[str] = ..., index_fingerprint: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., candidates: _Optional[_Union[CandidateSource, str]] = ..., hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., num_candidates: _Optional[int] = ..., recall_ceiling: _Optional[float] = ...) -> None: ...

class TraceQuery(_message.Message):
    __slots__ = ("query_id", "prompt", "target")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    prompt: str
    target: str
    def __init__(self, query_id: _Optional[str] = ..., prompt: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class BatchTraceRequest(_message.Message):
    __slots__ = ("index", "queries", "method", "candidates", "top_k", "num_candidates", "include_text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    index: str
    queries: _containers.RepeatedCompositeFieldContainer[TraceQuery]
    method: Method
    candidates: CandidateSource
    top_k: int
    num_candidates: int
    include_text: bool
    def __init__(self, index: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[TraceQuery, _Mapping]]] = ..., method: _Optional[_Union[Method, str]] = ..., candidates: _Optional[_Union[CandidateSource, str]] = ..., top_k: _Optional[int] = ..., num_candidates: _Optional[int] = ..., include_text: _Optional[bool] = ...) -> None: ...

class QueryError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class BatchTraceResponse(_message.Message):
    __slots__ = ("position", "result", "error")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    position: int
    result: TraceResponse
    error: QueryError
    def __init__(self, position: _Optional[int] = ..., result: _Optional[_Union[TraceResponse, _Mapping]] = ..., error: _Optional[_Union[QueryError, _Mapping]] = ...) -> None: ...

class EvaluateQuery(_message.Message):
    __slots__ = ("query_id", "prompt", "target", "proponents", "fact_id", "relation", "subject")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PROPONENTS_FIELD_NUMBER: _ClassVar[int]
    FACT_ID_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    prompt: str
    target: str
    proponents: _containers.RepeatedScalarFieldContainer[str]
    fact_id: str
    relation: str
    subject: str
    def __init__(self, query_id: _Optional[str] = ..., prompt: _Optional[str] = ..., target: _Optional[str] = ..., proponents: _Optional[_Iterable[str]] = ..., fact_id: _Optional[str] = ..., relation: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("index", "queries", "methods", "candidates", "num_candidates", "policy", "tail_patch", "tail_patch_max_queries")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TAIL_PATCH_FIELD_NUMBER: _ClassVar[int]
    TAIL_PATCH_MAX_QUERIES_FIELD_NUMBER: _ClassVar[int]
    index: str
    queries: _containers.RepeatedCompositeFieldContainer[EvaluateQuery]
    methods: _containers.RepeatedScalarFieldContainer[Method]
    candidates: CandidateSource
    num_candidates: int
    policy: EvaluatePolicy
    tail_patch: bool
    tail_patch_max_queries: int
    def __init__(self, index: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[EvaluateQuery, _Mapping]]] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., candidates: _Optional[_Union[CandidateSource, str]] = ..., num_candidates: _Optional[int] = ..., policy: _Optional[_Union[EvaluatePolicy, str]] = ..., tail_patch: _Optional[bool] = ..., tail_patch_max_queries: _Optional[int] = ...) -> None: ...

class EvaluateProgress(_message.Message):
    __slots__ = ("done_queries", "total_queries", "stage")
    DONE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_QUERIES_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    done_queries: int
    total_queries: int
    stage: str
    def __init__(self, done_queries: _Optional[int] = ..., total_queries: _Optional[int] = ..., stage: _Optional[str] = ...) -> None: ...

class MetricInterval(_message.Message):
    __slots__ = ("mean", "lo", "hi")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    mean: float
    lo: float
    hi: float
    def __init__(self, mean: _Optional[float] = ..., lo: _Optional[float] = ..., hi: _Optional[float] = ...) -> None: ...

class MethodMetrics(_message.Message):
    __slots__ = ("method", "candidates", "num_queries", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetricInterval
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetricInterval, _Mapping]] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NUM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    method: Method
    candidates: CandidateSource
    num_queries: int
    metrics: _containers.MessageMap[str, MetricInterval]
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., candidates: _Optional[_Union[CandidateSource, str]] = ..., num_queries: _Optional[int] = ..., metrics: _Optional[_Mapping[str, MetricInterval]] = ...) -> None: ...

class EvaluateResult(_message.Message):
    __slots__ = ("report_json", "methods")
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    methods: _containers.RepeatedCompositeFieldContainer[MethodMetrics]
    def __init__(self, report_json: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[MethodMetrics, _Mapping]]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: EvaluateProgress
    result: EvaluateResult
    def __init__(self, progress: _Optional[_Union[EvaluateProgress, _Mapping]] = ..., result: _Optional[_Union[EvaluateResult, _Mapping]] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("name", "fingerprint", "num_examples", "methods", "candidates", "info_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    fingerprint: str
    num_examples: int
    methods: _containers.RepeatedScalarFieldContainer[Method]
    candidates: _containers.RepeatedScalarFieldContainer[CandidateSource]
    info_json: str
    def __init__(self, name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., num_examples: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., candidates: _Optional[_Iterable[_Union[CandidateSource, str]]] = ..., info_json: _Optional[str] = ...) -> None: ...

class GetIndexRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: str
    def __init__(self, index: _Optional[str] = ...) -> None: ...

class GetIndexResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: IndexInfo
    def __init__(self, index: _Optional[_Union[IndexInfo, _Mapping]] = ...) -> None: ...

class ListIndexesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIndexesResponse(_message.Message):
    __slots__ = ("indexes", "next_page_token")
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[IndexInfo]
    next_page_token: str
    def __init__(self, indexes: _Optional[_Iterable[_Union[IndexInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("example_id", "text", "facts", "prompt", "target")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    text: str
    facts: _containers.RepeatedScalarFieldContainer[str]
    prompt: str
    target: str
    def __init__(self, example_id: _Optional[str] = ..., text: _Optional[str] = ..., facts: _Optional[_Iterable[str]] = ..., prompt: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class BatchGetExamplesRequest(_message.Message):
    __slots__ = ("index", "example_ids")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    index: str
    example_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[str] = ..., example_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchGetExamplesResponse(_message.Message):
    __slots__ = ("examples",)
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedCompositeFieldContainer[Example]
    def __init__(self, examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("index", "prompt", "target", "example_ids", "checkpoint", "lr", "num_random", "seed")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    NUM_RANDOM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    index: str
    prompt: str
    target: str
    example_ids: _containers.RepeatedScalarFieldContainer[str]
    checkpoint: int
    lr: float
    num_random: int
    seed: int
    def __init__(self, index: _Optional[str] = ..., prompt: _Optional[str] = ..., target: _Optional[str] = ..., example_ids: _Optional[_Iterable[str]] = ..., checkpoint: _Optional[int] = ..., lr: _Optional[float] = ..., num_random: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class VerifiedExample(_message.Message):
    __slots__ = ("example_id", "delta_logprob", "ms", "baseline")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    delta_logprob: float
    ms: float
    baseline: bool
    def __init__(self, example_id: _Optional[str] = ..., delta_logprob: _Optional[float] = ..., ms: _Optional[float] = ..., baseline: _Optional[bool] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("prompt", "target", "checkpoint", "lr", "examples", "baseline", "timings_ms", "index_fingerprint")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    target: str
    checkpoint: int
    lr: float
    examples: _containers.RepeatedCompositeFieldContainer[VerifiedExample]
    baseline: _containers.RepeatedCompositeFieldContainer[VerifiedExample]
    timings_ms: _containers.ScalarMap[str, float]
    index_fingerprint: str
    def __init__(self, prompt: _Optional[str] = ..., target: _Optional[str] = ..., checkpoint: _Optional[int] = ..., lr: _Optional[float] = ..., examples: _Optional[_Iterable[_Union[VerifiedExample, _Mapping]]] = ..., baseline: _Optional[_Iterable[_Union[VerifiedExample, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., index_fingerprint: _Optional[str] = ...) -> None: ...
