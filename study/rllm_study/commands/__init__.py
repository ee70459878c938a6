"""CLI command groups. Each module has `register(app)`; ALL lists them in help order."""

from rllm_study.commands import generate
from rllm_study.commands import run
from rllm_study.commands import bench
from rllm_study.commands import models
from rllm_study.commands import metrics
from rllm_study.commands import report
from rllm_study.commands import regrade
from rllm_study.commands import pack
from rllm_study.commands import datasets
from rllm_study.commands import schedule
from rllm_study.commands import peer_import

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
