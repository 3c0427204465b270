"""``FeaturizeConfig``: everything that determines a gradient feature (saved in the index manifest)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.featurize.layout import default_layer_patterns

DEFAULT_DIM = 7680  # kfac budget: 7,680 int8 coordinates + per-block scales <= 8 KB per example per checkpoint

PROJECTIONS = ("kfac", "gaussian", "rademacher", "orthogonal", "identity")
DTYPES = ("int8", "float16", "float32")


@dataclass(frozen=True)
class FeaturizeConfig:
    """How per-example gradients are featurized.

    The projection seed, kind and widths are part of a feature's identity: features
    made with different values are not comparable, and the index refuses to mix them.
    """

    # --- which parameters ---
    layers: tuple[str, ...] = field(default_factory=default_layer_patterns,
                                    metadata={"help": "fnmatch patterns of tracked linear modules"})
    include_biases: bool = field(default=True, metadata={"help": "exact bias gradients of tracked linears"})
    include_norms: bool = field(default=True, metadata={"help": "exact LayerNorm/RMSNorm gradients"})
    # --- projection ---
    k_in: int = field(default=64, metadata={"help": "input-side projection width (<=0: identity)"})
    k_out: int = field(default=64, metadata={"help": "output-side projection width (<=0: identity)"})
    projection: str = field(default="kfac",
                            metadata={"help": "kfac (top K-FAC eigenvectors) | orthogonal | gaussian | rademacher "
                                              "| identity"})
    seed: int = field(default=0, metadata={"help": "projection seed (random projections; kfac fit sample)"})
    # --- data-aware basis (projection="kfac") ---
    dim: int = field(default=DEFAULT_DIM, metadata={
        "help": "kfac: coordinates per example per checkpoint, split across groups by eigen-energy "
                "(0: uniform k_in x k_out)"})
    fit_docs: int = field(default=2048, metadata={"help": "kfac: documents in the seeded factor-fit sample"})
    fit_floor: int = field(default=4, metadata={"help": "kfac budget: minimum k_in and k_out per linear layer"})
    exact_share: float = field(default=0.1, metadata={
        "help": "kfac budget: share of dim that bias/norm groups may fill while kept exactly"})
    # --- loss ---
    loss_reduction: str = field(default="sum", metadata={"help": "sum | mean over target tokens"})
    max_length: int = field(default=128, metadata={"help": "token cap per example"})
    padding_side: str = field(default="right", metadata={"help": "right | left"})
    # --- optimizer correction (TrackStar) ---
    optimizer_correction: bool = field(default=True,
                                       metadata={"help": "also build Adam-corrected features when v is saved"})
    adam_eps: float = field(default=1e-8, metadata={"help": "eps in g / (sqrt(v) + eps)"})
    # --- execution / storage ---
    batch_size: int = field(default=32, metadata={"help": "examples per forward+backward"})
    dtype: str = field(default="int8", metadata={
        "help": "stored feature dtype: int8 (per-row scale per block) | float16 | float32"})

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise ValueError(f"FeaturizeConfig.projection must be one of {'|'.join(PROJECTIONS)}, "
                             f"got {self.projection!r}")
        if self.projection == "identity" and (self.k_in > 0 or self.k_out > 0):
            raise ValueError("FeaturizeConfig: identity projection needs k_in <= 0 and k_out <= 0")
        if self.projection not in ("identity", "kfac") and (self.k_in <= 0 or self.k_out <= 0):
            raise ValueError("FeaturizeConfig.k_in and k_out must be > 0 for a random projection")
        if self.dim < 0 or self.fit_docs < 1 or self.fit_floor < 1 or not 0.0 <= self.exact_share <= 1.0:
            raise ValueError("FeaturizeConfig: dim must be >= 0, fit_docs and fit_floor >= 1, "
                             "exact_share in [0, 1]")
        if self.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"FeaturizeConfig.loss_reduction must be sum|mean, got {self.loss_reduction!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"FeaturizeConfig.padding_side must be left|right, got {self.padding_side!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"FeaturizeConfig.dtype must be one of {'|'.join(DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1 or self.max_length < 2:
            raise ValueError("FeaturizeConfig.batch_size must be >= 1 and max_length >= 2")
        if not self.layers:
            raise ValueError("FeaturizeConfig.layers must name at least one pattern")

    @property
    def budgeted(self) -> bool:
        """Widths come from the K-FAC energy budget (not a uniform ``k_in x k_out``)."""
        return self.projection == "kfac" and self.dim > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturizeConfig:
        d = dict(d)
        d["layers"] = tuple(d.get("layers", default_layer_patterns()))
        return cls(**d)

    @classmethod
    def exact(cls, **kw: Any) -> FeaturizeConfig:
        """Identity projection: features equal the exact per-example gradients (tests, tiny models)."""
        kw.setdefault("dtype", "float32")
        return cls(k_in=0, k_out=0, projection="identity", **kw)
