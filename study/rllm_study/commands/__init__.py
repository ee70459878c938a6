"""CLI command groups. Each module has `register(app)`; ALL lists them in help order."""

from rllm_study.commands import (
    bench,
    datasets,
    generate,
    metrics,
    models,
    pack,
    peer_import,
    regrade,
    report,
    run,
    schedule,
)

ALL = [
    generate.register,
    run.register,
    bench.register,
    models.register,
    metrics.register,
    report.register,
    regrade.register,
    pack.register,
    datasets.register,
    schedule.register,
    peer_import.register,
]
