"""A network failure while streaming an optimized data set (`fit data.root=<optimized URI>`): retried with backoff,
then the run stops with one line naming the URI. The failure is real: a TCP proxy in front of a real S3 server
(moto, on localhost) cuts every connection at the first chunk request, as a link going down mid-run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from torch.utils.data import DataLoader, Dataset

from tests.conftest import write_class_folder
from tests.s3_store import CuttingProxy, s3_endpoint, s3_env, upload_folder  # noqa: F401
from transferkit.data.streaming.store import StoreUnreachableError, is_network_failure

pytest.importorskip("litdata")


class FailingStream(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise StoreUnreachableError("streaming 's3://b/p/train' failed after retries with backoff (...); check ...")


def test_the_error_a_loader_worker_raises_stays_one_line():
    with pytest.raises(StoreUnreachableError) as caught:
        next(iter(DataLoader(FailingStream(), num_workers=1)))
    assert str(caught.value) == "streaming 's3://b/p/train' failed after retries with backoff (...); check ..."


def test_network_failures_are_told_from_other_errors():
    try:
        raise RuntimeError("Chunk prefetch thread crashed") from ConnectionRefusedError(111, "Connection refused")
    except RuntimeError as err:
        chained = err
    assert is_network_failure(chained) and is_network_failure(TimeoutError())
    assert not is_network_failure(ValueError("bad pixels")) and not is_network_failure(RuntimeError("a bug"))


def store_objects(bucket: str) -> dict[str, str]:
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    return {item["Key"]: item["ETag"] for item in listed}


@pytest.mark.slow  # a fresh interpreter per case: about 30 s each
@pytest.mark.parametrize(("finetune", "cache_size"), [
    ("full", "1GB"),  # chunks prefetched into the cache (obstore)
    ("freeze", "2KB"),  # the linear probe reads items by index; the split does not fit the cache: ranged GETs (boto3)
])
def test_a_store_gone_mid_run_stops_with_one_line_naming_the_uri(tmp_path, s3_env, test_resnet_weights, finetune,
                                                                 cache_size):
    from tests.test_stream_optimized import optimize

    folder = write_class_folder(tmp_path / "images", per_class=8)
    bucket = f"cut-{finetune}"
    optimize(upload_folder(folder, bucket, "raw"), f"s3://{bucket}/ready")
    before, files = store_objects(bucket), {p: p.read_bytes() for p in folder.rglob("*.png")}
    proxy = CuttingProxy(s3_env["AWS_ENDPOINT_URL"])
    proxy.armed.set()
    env = {**s3_env, "AWS_ENDPOINT_URL": proxy.endpoint, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "transferkit", "fit", f"data.root=s3://{bucket}/ready",
                           f"finetune={finetune}", "model.backbone=test_resnet", f"model.weights={test_resnet_weights}",
                           "data.image_size=32", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1",
                           "trainer.accelerator=cpu", f"data.stream_cache={tmp_path / 'cache'}",
                           f"data.stream_cache_size={cache_size}",
                           f"run_dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=280,
                          cwd=tmp_path)
    assert proxy.cut.is_set() and proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("transferkit: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"transferkit: error: StoreUnreachableError: streaming 's3://{bucket}/ready/train' "
                                "failed after retries with backoff (")
    assert errors[0].endswith("then resume the run (fit resume=<run dir>).")
    assert "Traceback" not in proc.stderr and "CRASHED" not in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - start < 280  # LitData's own client retried 1000 times: hours (the timeout above)
    assert store_objects(bucket) == before  # nothing the user had is lost
    assert {p: p.read_bytes() for p in folder.rglob("*.png")} == files
    assert (tmp_path / "run" / "config.yaml").is_file()
