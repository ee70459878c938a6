"""Analysis: pure functions of recorded results folders: the metric registry (`metrics`), intervals
and tests (`stats`), load sweeps' front and knee (`sweep`), and grading recorded output again (`regrade`).

Every module that defines metrics (`@metric` / `@define`) is imported here, so the registry
`metrics.METRICS` holds every definition as soon as any module of this package is imported,
whatever is imported first (`rllm-study metrics --explain`, report appendices, docs/metrics.md).
"""

from rllm_study.analysis import metrics, stats, sweep  # noqa: F401  (each registers its definitions)
