"""Airflow as a thin layer: a task per run config, the work stays in the library.

    from pipelines.airflow import labelflow_task
    with DAG("labels_nightly", schedule="@daily", ...):
        labelflow_task("configs/nightly_s3.yaml")

Airflow is optional: importing this module never fails, and building a task
without Airflow installed raises an error naming the extra to install.
"""

from __future__ import annotations

from typing import Any

from pipelines.config import RunConfig
from pipelines.errors import LabelflowError


def run_config(config: str | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Run one config and return its summary (pushed to XCom by Airflow).

    Raises LabelflowError when any source failed, so the Airflow task fails
    and retries like any other; the message names each failed file and place.
    """
    cfg = RunConfig.load(config) if isinstance(config, str) else RunConfig.from_dict(config)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    report = cfg.run()
    summary = {
        "output": report.output,
        "counts": report.counts,
        "rejects": report.rejects,
        "lossy": report.lossy,
        "seconds": round(report.seconds, 3),
    }
    if not report.ok:
        msg = "; ".join(report.failures)
        raise LabelflowError(msg)
    return summary


def labelflow_task(config: str | dict[str, Any], task_id: str | None = None, **kwargs: Any):
    """An Airflow PythonOperator running `run_config(config)`."""
    try:
        from airflow.operators.python import PythonOperator
    except ImportError as exc:
        msg = "Airflow is not installed: pip install 'labelflow[airflow]'"
        raise LabelflowError(msg) from exc
    name = task_id or (
        f"labelflow_{config.rsplit('/', 1)[-1].split('.')[0]}"
        if isinstance(config, str)
        else "labelflow"
    )
    return PythonOperator(task_id=name, python_callable=run_config, op_args=[config], **kwargs)
